"""The R30x command set over one UART: one method per instruction, each reading the reply the datasheet gives.

``R30xModule`` knows the exchanges (a command and its ack; an ack then data packets from
the module; an ack then data packets to the module) and what each instruction returns.
``FingerprintScanner`` (device.py) builds the agent's API on it.
"""

from __future__ import annotations

from drivers.errors import DeviceProtocolError, DeviceReportedError
from drivers.fingerprint.frames import Frame, encode
from drivers.fingerprint.messages import (
    CHAR_BUFFER_1,
    Ack,
    Command,
    Confirmation,
    Instruction,
    MessageError,
    PacketId,
    SysParaRegister,
    SystemParameters,
    index_table_pages,
)
from drivers.fingerprint.protocol import FingerprintStream
from drivers.serial_link import SerialLink

NAME = "fingerprint"
REPLY_TIMEOUT_S = 1.0  # per packet; the module answers a command within a few ms plus the line time
COMMAND_RETRIES = 1  # resend an idempotent command once after a corrupt reply
DATA_MAX_BYTES = 64 * 1024  # cap on data uploaded by the module (an R307 image: 36,864 bytes)
CHAR_MAX_BYTES = 4096  # cap on a char file or template (R307: 512 bytes)


class R30xModule:
    """The module's instructions; one request in flight on the link."""

    name = NAME

    def __init__(self, port: str, baud: int, *, address: int, timeout_s: float | None) -> None:
        self.port = port
        self.baud = baud
        self.address = address
        self.timeout_s = REPLY_TIMEOUT_S if timeout_s is None else timeout_s
        self.parameters: SystemParameters | None = None
        self.resent = 0  # commands sent again after a corrupt reply (a running count)
        self._stream = FingerprintStream()
        self._link: SerialLink[Frame] = SerialLink(port, baud, device=NAME, decoder=self._stream)

    # -- the instruction set ----------------------------------------------------------

    def read_sys_para(self) -> SystemParameters:
        """ReadSysPara. :raises DeviceReportedError: :raises DeviceProtocolError: :raises DeviceTimeout:"""
        ack = self._expect_ok(self._command(Command(Instruction.READ_SYS_PARA)), "ReadSysPara")
        try:
            self.parameters = SystemParameters.from_bytes(ack.data)
        except MessageError as exc:
            raise self._protocol_error(f"unreadable system parameters: {exc}") from exc
        return self.parameters

    def template_count(self) -> int:
        """TemplateNum: templates stored in the library. :raises DriverError:"""
        return self._u16(self._expect_ok(self._command(Command(Instruction.TEMPLATE_NUM)), "TemplateNum"))

    def extract_features(self, buffer: int = CHAR_BUFFER_1) -> None:
        """Img2Tz: features of the image buffer into char buffer 1 or 2.

        :raises DeviceReportedError: 0x06 messy image, 0x07 too few features, 0x15 no image
        """
        self._expect_ok(self._command(Command.with_buffer(Instruction.IMG_2_TZ, buffer)), "Img2Tz")

    def match(self) -> tuple[bool, int]:
        """Match: compare the two char buffers; (matched above the module's threshold, score).

        :raises DeviceReportedError: any code but 00 (match) and 08 (no match)
        """
        ack = self._command(Command(Instruction.MATCH))
        if ack.code not in (Confirmation.OK, Confirmation.NO_MATCH):
            self._expect_ok(ack, "Match")
        return ack.ok, self._u16(ack)

    def search(self, buffer: int, start: int, count: int) -> tuple[int, int] | None:
        """Search library pages ``start .. start+count-1`` for a char buffer: (page, score) or None.

        :raises DeviceReportedError: any code but 00 (found) and 09 (not found)
        """
        ack = self._command(Command.search(buffer, start, count))
        if ack.code == Confirmation.NOT_FOUND:
            return None
        self._expect_ok(ack, "Search")
        return self._u16(ack, 0), self._u16(ack, 2)

    def register_model(self) -> None:
        """RegModel: combine both char buffers. :raises DeviceReportedError: 0x0A they differ"""
        self._expect_ok(self._command(Command(Instruction.REG_MODEL)), "RegModel")

    def store(self, buffer: int, page: int) -> None:
        """Store a char buffer at a library page. :raises DeviceReportedError: 0x0B page, 0x18 flash"""
        self._expect_ok(self._command(Command.with_page(Instruction.STORE, buffer, page)), "Store")

    def load_char(self, buffer: int, page: int) -> None:
        """LoadChar: a library page into a char buffer. :raises DeviceReportedError: 0x0C empty, 0x0B page"""
        self._expect_ok(self._command(Command.with_page(Instruction.LOAD_CHAR, buffer, page)), "LoadChar")

    def upload_char(self, buffer: int) -> bytes:
        """UpChar: a char buffer's bytes to the host. :raises DriverError:"""
        return self._upload(Command.with_buffer(Instruction.UP_CHAR, buffer), "UpChar", CHAR_MAX_BYTES)

    def download_char(self, buffer: int, data: bytes) -> None:
        """DownChar: bytes from the host into a char buffer. :raises DriverError:"""
        if not data or len(data) > CHAR_MAX_BYTES:
            raise ValueError(f"a char file of {len(data)} bytes (1..{CHAR_MAX_BYTES})")
        self._download(Command.with_buffer(Instruction.DOWN_CHAR, buffer), data, "DownChar")

    def delete_templates(self, page: int, count: int = 1) -> None:
        """DeletChar: ``count`` templates from ``page`` on. :raises DeviceReportedError: 0x10"""
        self._expect_ok(self._command(Command.delet_char(page, count)), "DeletChar")

    def empty_library(self) -> None:
        """Empty: delete every template. :raises DeviceReportedError: 0x11"""
        self._expect_ok(self._command(Command(Instruction.EMPTY)), "Empty")

    def read_index_table(self, index_page: int = 0) -> frozenset[int]:
        """ReadIndexTable: the library pages in use among 256 x index_page .. +255. :raises DriverError:"""
        ack = self._expect_ok(self._command(Command.read_index_table(index_page)), "ReadIndexTable")
        if len(ack.data) < 32:
            raise self._protocol_error(f"index table of {len(ack.data)} bytes, expected 32")
        return index_table_pages(index_page, ack.data)

    def random_code(self) -> int:
        """GetRandomCode: a u32 from the module's generator. :raises DriverError:"""
        ack = self._expect_ok(self._command(Command(Instruction.GET_RANDOM_CODE)), "GetRandomCode")
        try:
            return ack.u32()
        except MessageError as exc:
            raise self._protocol_error(str(exc)) from exc

    def set_sys_para(self, register: SysParaRegister, value: int) -> None:
        """SetSysPara; a new baud rate applies to the link after the module's ack (sent at the old one).

        :raises DeviceReportedError: 0x1A no such register, 0x1B a value it does not take
        """
        self._expect_ok(self._command(Command.set_sys_para(register, value)), f"SetSysPara {register.name}")
        if register is SysParaRegister.BAUD_CONTROL:
            self.baud = 9600 * value
            self._link.set_baud(self.baud)
        self.parameters = None  # read afresh when next needed

    # -- exchanges --------------------------------------------------------------------

    def _command(self, command: Command) -> Ack:
        for attempt in range(COMMAND_RETRIES + 1):
            try:
                with self._link.request():
                    self._send(command)
                    return self._receive_ack()
            except DeviceProtocolError:
                if attempt == COMMAND_RETRIES:
                    raise
                self.resent += 1
        raise AssertionError("unreachable")

    def _upload(self, command: Command, what: str, max_bytes: int) -> bytes:
        """A command whose OK ack is followed by data packets from the module (UpImage, UpChar)."""
        for attempt in range(COMMAND_RETRIES + 1):
            try:
                with self._link.request():
                    self._send(command)
                    self._expect_ok(self._receive_ack(), what)
                    return self._receive_data(max_bytes)
            except DeviceProtocolError:
                if attempt == COMMAND_RETRIES:
                    raise
                self.resent += 1
        raise AssertionError("unreachable")

    def _download(self, command: Command, data: bytes, what: str) -> None:
        """A command whose OK ack is followed by data packets from the host (DownChar, DownImage)."""
        size = (self.parameters or self.read_sys_para()).packet_size
        with self._link.request():
            self._send(command)
            self._expect_ok(self._receive_ack(), what)
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            for i, chunk in enumerate(chunks):
                pid = PacketId.END_OF_DATA if i == len(chunks) - 1 else PacketId.DATA
                self._link.send(encode(Frame(self.address, pid, chunk)))

    def _send(self, command: Command) -> None:
        self._link.send(encode(Frame(self.address, PacketId.COMMAND, command.to_bytes())))

    def _receive_frame(self) -> Frame:
        frame = self._link.receive(self.timeout_s)
        if frame.address != self.address:
            raise self._protocol_error(
                f"reply from address 0x{frame.address:08x}, expected 0x{self.address:08x}"
            )
        return frame

    def _receive_ack(self) -> Ack:
        frame = self._receive_frame()
        if frame.pid != PacketId.ACK:
            raise self._protocol_error(f"expected an acknowledge packet, got packet id 0x{frame.pid:02x}")
        try:
            return Ack.from_bytes(frame.payload)
        except MessageError as exc:
            raise self._protocol_error(str(exc)) from exc

    def _receive_data(self, max_bytes: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            frame = self._receive_frame()
            if frame.pid not in (PacketId.DATA, PacketId.END_OF_DATA):
                raise self._protocol_error(f"packet id 0x{frame.pid:02x} inside a data upload")
            chunks.append(frame.payload)
            total += len(frame.payload)
            if total > max_bytes:
                raise self._protocol_error(f"data upload exceeds {max_bytes} bytes")
            if frame.pid == PacketId.END_OF_DATA:
                return b"".join(chunks)

    def _expect_ok(self, ack: Ack, what: str) -> Ack:
        if not ack.ok:
            raise DeviceReportedError(
                f"fingerprint module on {self.port} refused {what}: {Confirmation.describe(ack.code)}",
                device=NAME,
                port=self.port,
                code=ack.code,
            )
        return ack

    def _u16(self, ack: Ack, offset: int = 0) -> int:
        try:
            return ack.u16(offset)
        except MessageError as exc:
            raise self._protocol_error(str(exc)) from exc

    def _protocol_error(self, message: str) -> DeviceProtocolError:
        return DeviceProtocolError(
            f"fingerprint module on {self.port}: {message}", device=NAME, port=self.port
        )


__all__ = ["R30xModule"]
