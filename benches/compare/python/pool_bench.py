"""Python's process pools, on tiny tasks, measured the way ringpool's Pool will be.

    pool_bench.py map TASKS [CHUNKSIZE]   Pool(2).map(square, range(TASKS)) -> tasks/s
    pool_bench.py executor TASKS          ProcessPoolExecutor(2): submit each, as_completed -> tasks/s
    pool_bench.py scene3                  the seed's scene 3, Pool(4) start to shutdown -> ms
    pool_bench.py bigparent fork|spawn    scene 3 with 1 GiB of touched heap in the parent -> ms
    pool_bench.py mapworkers TASKS N      Pool(N).map(square, range(TASKS)) -> tasks/s
    pool_bench.py strings ITEMS           Pool(2).map(str_task, ITEMS strings of 16..200 bytes) -> tasks/s
    pool_bench.py vecs ITEMS              Pool(2).map(vec_task, ITEMS lists of 1000 floats) -> tasks/s

strings and vecs are the runner's typed pool rows (src/typed_pool.rs): the same data (make_string,
make_vec) and the same tasks, each result compared with the task run in the parent.

Start method "fork" (bigparent: the one named). The pools are not pinned (the OS places the workers, as a user's would be).
For map and executor the pool is started and warmed up (one small map or a few tasks) before
the clock starts; scene 3 times everything from Pool(4) to join(). Every result is checked;
a wrong one ends the script with status 3. Prints one line: `RESULT {json}`.
"""

import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

MISMATCH_EXIT = 3


def square(x):
    return x * x


def expect_sum(n):
    return (n - 1) * n * (2 * n - 1) // 6


def check(ok, what):
    if not ok:
        print(f"\n*** RESULT MISMATCH in python pool: {what} ***\n", file=sys.stderr)
        sys.exit(MISMATCH_EXIT)


def bench_map(tasks, chunksize=None):
    with mp.get_context("fork").Pool(2) as pool:
        check(pool.map(square, range(1000)) == [square(i) for i in range(1000)], "warm-up map")
        t0 = time.perf_counter()
        out = pool.map(square, range(tasks), chunksize)
        secs = time.perf_counter() - t0
    check(len(out) == tasks and sum(out) == expect_sum(tasks) and out[-1] == square(tasks - 1),
          "map results")
    return {"tasks": tasks, "secs": secs, "tasks_per_s": tasks / secs}


def bench_executor(tasks):
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
        warm = [ex.submit(square, i) for i in range(100)]
        check(sum(f.result() for f in as_completed(warm)) == expect_sum(100), "warm-up tasks")
        t0 = time.perf_counter()
        futures = [ex.submit(square, i) for i in range(tasks)]
        total = sum(f.result() for f in as_completed(futures))
        secs = time.perf_counter() - t0
    check(total == expect_sum(tasks), "executor results")
    return {"tasks": tasks, "secs": secs, "tasks_per_s": tasks / secs}


def bench_scene3():
    t0 = time.perf_counter()
    pool = mp.get_context("fork").Pool(processes=4)
    out = pool.map(square, list(range(100)))
    pool.close()
    pool.join()
    secs = time.perf_counter() - t0
    check(out == [i * i for i in range(100)], "scene 3 results")
    return {"tasks": 100, "secs": secs, "wall_ms": secs * 1e3}


def bench_bigparent(method):
    # 1 GiB, every page written (repeating a non-zero byte writes every byte).
    heap = bytearray(b"\x01") * (1 << 30)
    t0 = time.perf_counter()
    pool = mp.get_context(method).Pool(processes=4)
    out = pool.map(square, list(range(100)))
    pool.close()
    pool.join()
    secs = time.perf_counter() - t0
    check(out == [i * i for i in range(100)], "bigparent results")
    check(heap[len(heap) // 2] == 1, "the parent's heap changed")
    return {"tasks": 100, "secs": secs, "wall_ms": secs * 1e3, "method": method}


def bench_mapworkers(tasks, workers):
    with mp.get_context("fork").Pool(workers) as pool:
        check(pool.map(square, range(1000)) == [square(i) for i in range(1000)], "warm-up map")
        t0 = time.perf_counter()
        out = pool.map(square, range(tasks))
        secs = time.perf_counter() - t0
    check(len(out) == tasks and sum(out) == expect_sum(tasks), "map results")
    return {"tasks": tasks, "workers": workers, "secs": secs, "tasks_per_s": tasks / secs}


# String i: 16 to 200 lowercase letters, letter j = chr(97 + (i + 5 j) % 26) (src/typed_pool.rs).
_LETTERS = {k: "".join(chr(97 + (k + 5 * j) % 26) for j in range(200)) for k in range(26)}


def make_string(i):
    return _LETTERS[i % 26][: 16 + (i * 7919 % 185)]


def make_vec(i):
    base = i * 1000
    return [((base + j) % 997) * 0.5 + 0.25 for j in range(1000)]


def str_task(s):
    """(length, count of 'a', first 8 characters uppercased): a tuple holding a new str."""
    return (len(s), s.count("a"), s[:8].upper())


def vec_task(v):
    """(sum, the sums of the 10 blocks of 100): a tuple holding a new list."""
    total = 0.0
    for x in v:
        total += x
    blocks = []
    for b in range(10):
        acc = 0.0
        for x in v[b * 100:(b + 1) * 100]:
            acc += x
        blocks.append(acc)
    return (total, blocks)


def bench_typed(kind, items):
    make, task = (make_string, str_task) if kind == "strings" else (make_vec, vec_task)
    data = [make(i) for i in range(items)]
    with mp.get_context("fork").Pool(2) as pool:
        warm = [make(i) for i in range(64)]
        check(pool.map(task, warm) == [task(x) for x in warm], "warm-up map")
        t0 = time.perf_counter()
        out = pool.map(task, data)
        secs = time.perf_counter() - t0
    check(len(out) == items, f"{kind}: {len(out)} results for {items}")
    for i in range(items):
        check(out[i] == task(data[i]), f"{kind} {i}: got {out[i]!r}")
    return {"items": items, "secs": secs, "tasks_per_s": items / secs}


def main(argv):
    mode = argv[1]
    if mode == "map":
        result = bench_map(int(argv[2]), int(argv[3]) if len(argv) > 3 else None)
    elif mode == "bigparent":
        result = bench_bigparent(argv[2])
    elif mode == "mapworkers":
        result = bench_mapworkers(int(argv[2]), int(argv[3]))
    elif mode in ("strings", "vecs"):
        result = bench_typed(mode, int(argv[2]))
    elif mode == "executor":
        result = bench_executor(int(argv[2]))
    else:
        result = bench_scene3()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv)
