"""The reference central consumer: ingests enrollments, acknowledges, keeps the fleet table."""
