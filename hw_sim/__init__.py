"""Byte-level simulators of the recorder kit's peripherals, with fault injection."""
