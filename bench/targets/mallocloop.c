/* Benchmark target: calls libc's malloc (and free) once a millisecond until killed, so a
 * tracer that has attached sees its first event within about 1 ms. */
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
    for (;;) {
        void *volatile p = malloc(64);
        free(p);
        usleep(1000);
    }
}
