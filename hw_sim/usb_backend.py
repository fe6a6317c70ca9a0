"""The simulated USB cable: a pyusb backend in the driver's process, the device in the simulator's.

``SimUsbBackend(sim_dir)`` implements ``usb.backend.IBackend``, so the driver's real
``usb.core.find`` / ``dev.write`` / ``dev.read`` / ``ctrl_transfer`` code runs unchanged; each
backend call becomes one request on the Unix socket ``DIR/iris.sock``, where a ``Gadget`` (the
simulated device) answers it. The cable messages, little-endian:

    request  op u8 | generation u32 | timeout_ms u32 | length u32 | body
    reply    status u8 | length u32 | body

``generation`` counts plug-ins: a handle opened before an unplug is dead after it (ENODEV),
as a real USB handle is. The device's descriptors travel as JSON in the DESCRIBE reply.
"""

from __future__ import annotations

import array
import errno
import json
import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

import usb.backend
import usb.core

from hw_sim.unix_socket import recv_exact

SOCKET_NAME = "iris.sock"
SOCKET_MARGIN_S = 2.0  # beyond the transfer's own timeout, in case the simulator itself hangs
CONNECT_TIMEOUT_S = 2.0
CABLE_REQUEST = struct.Struct("<BIII")
CABLE_REPLY = struct.Struct("<BI")
SETUP = struct.Struct("<BBHHH")  # bmRequestType, bRequest, wValue, wIndex, wLength
MAX_CABLE_BODY = 1 << 20


class CableOp(IntEnum):
    DESCRIBE = 1
    BULK_OUT = 2
    BULK_IN = 3
    CONTROL = 4


class CableStatus(IntEnum):
    OK = 0
    NO_DEVICE = 1
    TIMEOUT = 2
    STALL = 3


class CableError(Exception):
    """What the gadget answers instead of data: no device, timeout, or a stalled request."""

    def __init__(self, status: CableStatus, message: str = "") -> None:
        super().__init__(message or status.name)
        self.status = status


class Gadget(Protocol):
    """The simulated device behind the cable (``hw_sim.iris.SimIris``)."""

    def describe(self) -> dict[str, Any]: ...

    def bulk_out(self, generation: int, endpoint: int, data: bytes) -> int: ...

    def bulk_in(self, generation: int, endpoint: int, size: int, timeout_ms: int) -> bytes: ...

    def control(self, generation: int, setup: tuple[int, int, int, int, int], data: bytes) -> bytes: ...


def serve_cable(conn: socket.socket, gadget: Gadget) -> None:
    """Answer one cable request on ``conn`` (the simulator's side)."""
    op, generation, timeout_ms, length = CABLE_REQUEST.unpack(recv_exact(conn, CABLE_REQUEST.size))
    body = recv_exact(conn, min(length, MAX_CABLE_BODY))
    try:
        if op == CableOp.DESCRIBE:
            answer = json.dumps(gadget.describe()).encode()
        elif op == CableOp.BULK_OUT:
            answer = struct.pack("<I", gadget.bulk_out(generation, body[0], body[1:]))
        elif op == CableOp.BULK_IN:
            endpoint, size = struct.unpack("<BI", body)
            answer = gadget.bulk_in(generation, endpoint, size, timeout_ms)
        elif op == CableOp.CONTROL:
            setup = SETUP.unpack_from(body)
            answer = gadget.control(generation, setup, body[SETUP.size :])
        else:
            raise CableError(CableStatus.STALL, f"unknown cable op {op}")
    except CableError as exc:
        conn.sendall(CABLE_REPLY.pack(exc.status, 0))
        return
    conn.sendall(CABLE_REPLY.pack(CableStatus.OK, len(answer)) + answer)


# -- the driver's side: pyusb backend ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Descriptor:
    """A descriptor object as pyusb reads it: plain attributes."""

    fields: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True, slots=True)
class SimDeviceId:
    """What enumerate_devices yields: one plug-in of the simulated device."""

    generation: int
    info: dict[str, Any]


@dataclass(slots=True)
class _Handle:
    dev: SimDeviceId
    configuration: int = 1


class SimUsbBackend(usb.backend.IBackend):  # type: ignore[misc]
    """pyusb backend whose one device is the simulator's iris camera at ``sim_dir/iris.sock``."""

    def __init__(self, sim_dir: Path | str) -> None:
        super().__init__()
        self.socket_path = Path(sim_dir) / SOCKET_NAME

    # -- enumeration and descriptors ----------------------------------------------------------

    def enumerate_devices(self) -> Any:
        try:
            info = json.loads(self._call(CableOp.DESCRIBE, 0, 0, b""))
        except (usb.core.USBError, ValueError):
            return iter(())
        return iter((SimDeviceId(int(info["generation"]), info),))

    def get_parent(self, dev: SimDeviceId) -> None:
        return None

    def get_device_descriptor(self, dev: SimDeviceId) -> _Descriptor:
        info = dev.info
        return _Descriptor(
            {
                "bLength": 18,
                "bDescriptorType": 0x01,
                "bcdUSB": 0x0200,
                "bDeviceClass": 0,
                "bDeviceSubClass": 0,
                "bDeviceProtocol": 0,
                "bMaxPacketSize0": 64,
                "idVendor": info["vid"],
                "idProduct": info["pid"],
                "bcdDevice": info["bcd_device"],
                "iManufacturer": 1,
                "iProduct": 2,
                "iSerialNumber": 3,
                "bNumConfigurations": 1,
                "bus": 1,
                "address": 1 + dev.generation % 127,  # a replugged device gets a new address
                "port_number": 1,
                "port_numbers": (1,),
                "speed": 3,  # LIBUSB_SPEED_HIGH
            }
        )

    def get_configuration_descriptor(self, dev: SimDeviceId, config: int) -> _Descriptor:
        if config != 0:
            raise IndexError(f"no configuration {config}")
        return _Descriptor(
            {
                "bLength": 9,
                "bDescriptorType": 0x02,
                "wTotalLength": 9 + 9 + 7 * len(dev.info["endpoints"]),
                "bNumInterfaces": 1,
                "bConfigurationValue": 1,
                "iConfiguration": 0,
                "bmAttributes": 0x80,
                "bMaxPower": 250,  # 500 mA: the illuminator
                "extra_descriptors": [],
            }
        )

    def get_interface_descriptor(self, dev: SimDeviceId, intf: int, alt: int, config: int) -> _Descriptor:
        if config != 0 or intf != 0 or alt != 0:
            raise IndexError(f"no interface {intf} alternate setting {alt}")
        return _Descriptor(
            {
                "bLength": 9,
                "bDescriptorType": 0x04,
                "bInterfaceNumber": 0,
                "bAlternateSetting": 0,
                "bNumEndpoints": len(dev.info["endpoints"]),
                "bInterfaceClass": dev.info["interface_class"],
                "bInterfaceSubClass": 0,
                "bInterfaceProtocol": 0,
                "iInterface": 0,
                "extra_descriptors": [],
            }
        )

    def get_endpoint_descriptor(
        self, dev: SimDeviceId, ep: int, intf: int, alt: int, config: int
    ) -> _Descriptor:
        if config != 0 or intf != 0 or alt != 0:
            raise IndexError(f"no interface {intf} alternate setting {alt}")
        address, attributes, max_packet = dev.info["endpoints"][ep]
        return _Descriptor(
            {
                "bLength": 7,
                "bDescriptorType": 0x05,
                "bEndpointAddress": address,
                "bmAttributes": attributes,
                "wMaxPacketSize": max_packet,
                "bInterval": 0,
                "bRefresh": 0,
                "bSynchAddress": 0,
                "extra_descriptors": [],
            }
        )

    # -- handles --------------------------------------------------------------------------------

    def open_device(self, dev: SimDeviceId) -> _Handle:
        handle = _Handle(dev)
        self._check_alive(handle)
        return handle

    def close_device(self, dev_handle: _Handle) -> None:
        return None

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._check_alive(dev_handle)
        if config_value not in (0, 1):
            raise usb.core.USBError("Invalid parameter", errno=errno.EINVAL)
        dev_handle.configuration = config_value

    def get_configuration(self, dev_handle: _Handle) -> int:
        return dev_handle.configuration

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        if intf != 0 or altsetting != 0:
            raise usb.core.USBError("Invalid parameter", errno=errno.EINVAL)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._check_alive(dev_handle)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        return None

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        return None

    # -- transfers ------------------------------------------------------------------------------

    def bulk_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        answer = self._call(
            CableOp.BULK_OUT, dev_handle.dev.generation, timeout, bytes([ep]) + data.tobytes()
        )
        (count,) = struct.unpack("<I", answer)
        return int(count)

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        body = struct.pack("<BI", ep, len(buff) * buff.itemsize)
        data = self._call(CableOp.BULK_IN, dev_handle.dev.generation, timeout, body)
        buff[: len(data)] = array.array("B", data)
        return len(data)

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        device_to_host = bool(bmRequestType & 0x80)
        length = len(data) * data.itemsize
        setup = SETUP.pack(bmRequestType, bRequest, wValue, wIndex, length)
        payload = b"" if device_to_host else data.tobytes()
        answer = self._call(CableOp.CONTROL, dev_handle.dev.generation, timeout, setup + payload)
        if not device_to_host:
            return length
        answer = answer[:length]
        data[: len(answer)] = array.array("B", answer)
        return len(answer)

    # -- the cable ------------------------------------------------------------------------------

    def _check_alive(self, handle: _Handle) -> None:
        info = json.loads(self._call(CableOp.DESCRIBE, handle.dev.generation, 0, b""))
        if int(info["generation"]) != handle.dev.generation:
            raise _no_device()

    def _call(self, op: CableOp, generation: int, timeout_ms: int, body: bytes) -> bytes:
        wait = None if timeout_ms == 0 else timeout_ms / 1000 + SOCKET_MARGIN_S  # 0 = no timeout, as libusb
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(CONNECT_TIMEOUT_S)
                conn.connect(str(self.socket_path))
                conn.settimeout(wait)
                conn.sendall(CABLE_REQUEST.pack(op, generation, timeout_ms, len(body)) + body)
                status, length = CABLE_REPLY.unpack(recv_exact(conn, CABLE_REPLY.size))
                answer = recv_exact(conn, length)
        except TimeoutError as exc:
            raise usb.core.USBTimeoutError("Operation timed out", None, errno.ETIMEDOUT) from exc
        except OSError as exc:  # no simulator there: as if the device were unplugged
            raise _no_device() from exc
        if status == CableStatus.OK:
            return answer
        if status == CableStatus.TIMEOUT:
            raise usb.core.USBTimeoutError("Operation timed out", None, errno.ETIMEDOUT)
        if status == CableStatus.STALL:
            raise usb.core.USBError("Pipe error", None, errno.EPIPE)
        raise _no_device()


def _no_device() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)", None, errno.ENODEV)
