"Files made to hurt a loader: a pickle that runs a command, a PNG header that announces a huge image"
import os
import pickle
import struct
import zlib
from pathlib import Path


class _Payload:
    "Unpickling this runs a shell command (what a tampered .pt can do)"
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def evil_pt(path:Path, marker:Path) -> Path:
    "A .pt file whose loading (unpickling) creates `marker`"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({'model': _Payload(marker)}, protocol=2))
    return path


def huge_png_header(path:Path, width:int=12000, height:int=12000) -> Path:
    "A PNG that announces width x height pixels (its header only: a bomb for a decoder that trusts it)"
    def chunk(kind:bytes, data:bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)   # 8-bit RGB
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))
    return path
