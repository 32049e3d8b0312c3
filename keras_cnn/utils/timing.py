"""Wall-clock timing: the median-of-runs helpers that latency figures and the timed choices ("auto" precision,
the kernel-gradient method of `keras_cnn.models.layers.fastest`) share."""
import statistics
import time


def median_seconds(call, runs, warmup=1, clock=time.perf_counter):
    """Median seconds of `runs` calls of `call()`, after `warmup` untimed calls (tracing, compilation, caches)."""
    return interleaved_median_seconds({None: call}, runs, warmup, clock)[None]


def interleaved_median_seconds(calls, runs, warmup=1, clock=time.perf_counter):
    """{key: median seconds} of the callables `calls` (key -> no-argument callable), timed in `runs` rounds that
    call each in turn, after `warmup` untimed rounds: a slow spell of the machine falls on all of them alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {key: [] for key in calls}
    for _ in range(runs):
        for key, call in calls.items():
            start = clock()
            call()
            times[key].append(clock() - start)
    return {key: statistics.median(values) for key, values in times.items()}
