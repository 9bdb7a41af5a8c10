"""A fake serial port for the link tests: a BoardFirmware behind pyserial's port interface, with scripted faults."""

import serial

from firmware_model import protocol as p



class ScriptedPort:
    """Every request is answered (after `junk` bytes, passed through `mangle` if given); the first `lose` answers are
    not sent at all and the first `stall_writes` writes time out."""

    def __init__(self, firmware, junk=b"", lose=0, stall_writes=0, mangle=None):
        self.firmware, self.junk, self.lose = firmware, junk, lose
        self.stall_writes, self.mangle = stall_writes, mangle
        self.decoder = p.FrameDecoder()
        self.inbox = bytearray()
        self.timeout = 0.01

    def write(self, data):
        if self.stall_writes > 0:
            self.stall_writes -= 1
            raise serial.SerialTimeoutException("Write timeout")
        for payload in self.decoder.feed(data):
            response = self.firmware.handle(payload)
            if self.lose > 0:
                self.lose -= 1
                continue
            if self.mangle is not None:
                response = self.mangle(response)
            self.inbox += self.junk + p.encode_frame(response)

    def read(self, n):
        out = bytes(self.inbox[:n])
        del self.inbox[:n]
        return out

    @property
    def in_waiting(self):
        return len(self.inbox)

    def close(self):
        pass
