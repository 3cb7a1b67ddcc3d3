"""multiprocessing.Queue between two processes, measured the way the Rust peers are.

    queue_bench.py oneway SIZE MAXSIZE WARM COUNT CPU_TX CPU_RX
    queue_bench.py rtt    SIZE WARM COUNT CPU_CLIENT CPU_SERVER

Start method "fork" (Linux's default up to Python 3.13). A CPU of -1 means: do not pin.
Prints one line, `RESULT {json}`; a wrong message ends the script with status 3.

The message is the same as the Rust peers': 8 bytes of sequence number | flags (little endian),
then a byte that changes with every message repeated, then the head again (for 16 bytes and up).
The sender builds each message anew (a bytes object; the Queue pickles it); the receiver checks
the sequence number, both heads, three sampled bytes, and every 16th message in full.
"""

import json
import multiprocessing as mp
import os
import sys
import time

MARK = 1 << 62
LAST = 1 << 63
FLAGS = MARK | LAST
FULL_CHECK_EVERY = 16
MISMATCH_EXIT = 3


def fill_byte(seq):
    return (seq * 131 + 17) & 0xFF


def make(seq, flags, size):
    head = (seq | flags).to_bytes(8, "little")
    if size < 16:
        return head + bytes((fill_byte(seq),)) * (size - 8)
    return head + bytes((fill_byte(seq),)) * (size - 16) + head


def mismatch(what):
    print(f"\n*** PAYLOAD MISMATCH in peer python mp.Queue: {what} ***\n", file=sys.stderr)
    sys.stderr.flush()
    os._exit(MISMATCH_EXIT)


class Checker:
    def __init__(self, size):
        self.next = 0
        self.size = size
        self.full_checks = 0

    def check(self, m):
        expect = self.next
        size = self.size
        if len(m) != size:
            mismatch(f"message {expect}: {len(m)} bytes, expected {size}")
        head = int.from_bytes(m[:8], "little")
        seq, flags = head & ~FLAGS, head & FLAGS
        if seq != expect:
            mismatch(f"got message {seq}, expected {expect}")
        end = size - 8 if size >= 16 else size
        if end < size and m[end:] != m[:8]:
            mismatch(f"message {seq}: tail head differs from head")
        if end > 8:
            b = fill_byte(seq)
            if m[8] != b or m[8 + (end - 8) // 2] != b or m[end - 1] != b:
                mismatch(f"message {seq}: sampled byte differs")
            if seq % FULL_CHECK_EVERY == 0:
                self.full_checks += 1
                if m.count(bytes((b,)), 8, end) != end - 8:
                    mismatch(f"message {seq}: full check failed")
        self.next += 1
        return seq, flags


def pin(cpu):
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})


def producer(q, size, warm, count, cpu):
    pin(cpu)
    for seq in range(warm + count + 1):
        flags = MARK if seq == warm else LAST if seq == warm + count else 0
        q.put(make(seq, flags, size))
    q.close()
    q.join_thread()


def oneway(size, maxsize, warm, count, cpu_tx, cpu_rx):
    pin(cpu_rx)  # the receiver is this process; the producer re-pins itself
    ctx = mp.get_context("fork")
    q = ctx.Queue(maxsize)
    p = ctx.Process(target=producer, args=(q, size, warm, count, cpu_tx))
    p.start()
    chk = Checker(size)
    t0 = t1 = None
    while True:
        seq, flags = chk.check(q.get())
        if flags:
            now = time.perf_counter()
            if flags & MARK:
                t0 = now
            if flags & LAST:
                t1 = now
                break
    p.join()
    if p.exitcode != 0:
        sys.exit(f"producer exited with {p.exitcode}")
    secs = t1 - t0
    return {
        "msgs": count,
        "secs": secs,
        "msgs_per_s": count / secs,
        "bytes_per_s": count * size / secs,
        "full_checks": chk.full_checks,
    }


def server(ping, pong, size, cpu):
    pin(cpu)
    chk = Checker(size)
    while True:
        seq, flags = chk.check(ping.get())
        pong.put(make(seq, flags, size))
        if flags & LAST:
            break
    pong.close()
    pong.join_thread()


def rtt(size, warm, count, cpu_client, cpu_server):
    pin(cpu_client)
    ctx = mp.get_context("fork")
    ping, pong = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=server, args=(ping, pong, size, cpu_server))
    p.start()
    chk = Checker(size)
    ns = []
    clock = time.perf_counter_ns
    for seq in range(warm + count):
        t0 = clock()
        ping.put(make(seq, 0, size))
        chk.check(pong.get())
        dt = clock() - t0
        if seq >= warm:
            ns.append(dt)
    ping.put(make(warm + count, LAST, size))
    chk.check(pong.get())
    p.join()
    if p.exitcode != 0:
        sys.exit(f"server exited with {p.exitcode}")
    ns.sort()
    pick = lambda q: ns[round((len(ns) - 1) * q)]
    return {
        "n": len(ns),
        "rtt_median_ns": pick(0.5),
        "rtt_p99_ns": pick(0.99),
        "rtt_min_ns": ns[0],
        "rtt_mean_ns": sum(ns) / len(ns),
    }


def main(argv):
    mode, args = argv[1], [int(a) for a in argv[2:]]
    result = oneway(*args) if mode == "oneway" else rtt(*args)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv)
