"""Independent per-slice QPs from FFmpeg's `trace_headers` bitstream filter (libavcodec's CBS
parsers, bundled with PyAV), to check vsqe.pqf against.

    python tests/pqf/trace_oracle.py vvc path/*.bit     # prints ok / MISMATCH per stream
"""
from __future__ import annotations

import re
import sys

import av
import av.logging
from av.bitstream import BitStreamFilterContext

_LINE = re.compile(r"\s*\d+\s+(\S+)\s+[01]+ = (-?\d+)")
# (init QP element in the PPS, the slice's PPS id element, the slice QP delta element)
_NAMES = {
    "h264": ("pic_parameter_set_id", "pic_init_qp_minus26", "pic_parameter_set_id", "slice_qp_delta"),
    "hevc": ("pps_pic_parameter_set_id", "init_qp_minus26", "slice_pic_parameter_set_id", "slice_qp_delta"),
    "vvc": ("pps_pic_parameter_set_id", "pps_init_qp_minus26", "ph_pic_parameter_set_id", "sh_qp_delta"),
}


def trace_lines(path: str, codec: str) -> list[str]:
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    with av.logging.Capture(local=False) as logs:
        with av.open(path, format=codec) as c:
            s = c.streams.video[0]
            bsf = BitStreamFilterContext("trace_headers", s)
            for pkt in c.demux(s):
                for _ in bsf.filter(pkt):
                    pass
    av.logging.set_level(previous)
    return "".join(m for _, _, m in logs).splitlines()


def slice_qps(path: str, codec: str) -> list[int]:
    """SliceQpY of every base-layer slice in decode order (dependent slice segments skipped)."""
    pps_id_name, init_name, slice_pps_name, delta_name = _NAMES[codec]
    init: dict[int, int] = {}
    qps: list[int] = []
    ph: tuple[int, int | None] = (0, None)  # VVC: the picture header in force (PPS id, ph_qp_delta)
    section, fields = "", {}

    def close() -> None:
        nonlocal ph
        if fields.get("nuh_layer_id", 0) != 0:
            return
        if section == "pps" and init_name in fields:
            init[fields[pps_id_name]] = fields[init_name]
        if codec == "vvc" and section in ("ph", "slice") and "ph_pic_parameter_set_id" in fields:
            ph = (fields["ph_pic_parameter_set_id"], fields.get("ph_qp_delta"))
        if section == "slice":
            if codec == "vvc":
                delta = fields.get("sh_qp_delta", ph[1])
                qps.append(26 + init[ph[0]] + delta)
            elif delta_name in fields:
                qps.append(26 + init[fields[slice_pps_name]] + fields[delta_name])

    for line in trace_lines(path, codec):
        m = _LINE.match(line)
        if m is None:
            close()
            title = line.strip().lower()
            section = ("pps" if "picture parameter set" in title else
                       "slice" if title in ("slice header", "slice segment header") else
                       "ph" if title == "picture header" else "other")
            fields = {}
        else:
            fields.setdefault(m.group(1), int(m.group(2)))
    close()
    return qps


if __name__ == "__main__":
    from vsqe.pqf.stream import read_pictures

    codec = sys.argv[1]
    for path in sys.argv[2:]:
        expected = slice_qps(path, codec)
        got = [q for p in read_pictures(path, codec) for q in p.slice_qps]
        print("ok" if got == expected else "MISMATCH", path, len(expected))
