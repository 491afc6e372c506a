"""BPF C sources of Alpha's eBPF sensor (package data, read by alpha.sensors.ebpf).

sensor.bpf.c is the program (syscall, sched and task tracepoints; ring buffer output);
records.h the record layouts it shares with alpha/sensors/decode.py.
"""
