"""Peripheral drivers of the e-KTP recorder kit, one package per device.

Drivers know nothing of the agent: they speak their device's wire protocol and
return typed results or raise typed errors (see drivers.errors).
"""
