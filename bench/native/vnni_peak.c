/* Peak int8 throughput of AVX-512 VNNI on this CPU: NACC independent vpdpbusd chains per thread on
 * register-resident operands (no memory traffic), so the loop is bound only by the instruction's
 * throughput.  One vpdpbusd zmm = 16 lanes x 4 u8*s8 products = 64 multiply-accumulates.
 * Build: gcc -O2 -mavx512f -mavx512vnni -fopenmp vnni_peak.c -o vnni_peak
 * Run:   ./vnni_peak THREADS ITERS   -> prints "threads macs seconds" (bench/x86_vnni_peak.py parses it). */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define NACC 12 /* > latency x throughput of vpdpbusd on current cores, so chains never stall */

static int32_t run(long iters, int seed) {
  __m512i a = _mm512_set1_epi32(0x01020304 + seed), b = _mm512_set1_epi32(0x05060708 - seed);
  __m512i acc[NACC];
  for (int j = 0; j < NACC; ++j) acc[j] = _mm512_set1_epi32(j);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < NACC; ++j) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
  }
  __m512i s = acc[0];
  for (int j = 1; j < NACC; ++j) s = _mm512_add_epi32(s, acc[j]);
  return _mm512_reduce_add_epi32(s); /* returned so the compiler cannot drop the loop */
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  long iters = argc > 2 ? atol(argv[2]) : 100000000L;
  omp_set_num_threads(threads);
  int32_t sink = 0;
  run(iters / 100, 0); /* warm up: clocks and AVX-512 power state */
  double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
  sink += run(iters, omp_get_thread_num());
  double dt = omp_get_wtime() - t0;
  double macs = (double)threads * iters * NACC * 64.0;
  printf("%d %.6e %.6f %d\n", threads, macs, dt, sink & 1);
  return 0;
}
