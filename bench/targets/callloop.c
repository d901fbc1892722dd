/* Benchmark target: calls a small function in a tight loop and reports the time per call.
 * usage: callloop ITERATIONS [SECONDS]
 * Waits for one byte on stdin before starting, so the tracer can attach first.
 * With SECONDS > 0, loops for that long instead and reports the number of calls. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) int bench_target(int a, int b)
{
    __asm__ volatile("" ::: "memory");
    return a + b;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 100000;
    double seconds = argc > 2 ? atof(argv[2]) : 0;
    char go;
    if (read(0, &go, 1) != 1)
        return 2;
    volatile long sink = 0;
    double t0 = now(), t1;
    long calls = 0;
    if (seconds > 0) {
        do {
            for (int i = 0; i < 1000; i++)
                sink += bench_target(i, 1);
            calls += 1000;
        } while (now() - t0 < seconds);
    } else {
        for (long i = 0; i < iters; i++)
            sink += bench_target((int)i, 1);
        calls = iters;
    }
    t1 = now();
    printf("calls %ld ns_per_call %.1f\n", calls, (t1 - t0) * 1e9 / calls);
    return 0;
}
