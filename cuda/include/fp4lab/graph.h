/* CUDA graphs of this library's own calls: record a sequence of asynchronous calls once (e.g.
 * one decode step) and replay it with a single launch, so that a step of hundreds of small
 * kernels costs one host-side launch instead of hundreds.
 *
 * Between fp4_graph_begin and fp4_graph_end, the calling thread's asynchronous CUDA calls of the
 * decode ops (fp4lab/decode.h) and of fp4_gemm are recorded, not run. Calls that synchronize or
 * copy through the host (fp4_memcpy, fp4_quantize, ...) must not be made in between: they fail
 * and abort the recording. Pointers and sizes are baked into the graph, so a replay reads and
 * writes the same buffers; values that change from step to step must live in device memory
 * (as the decode ops' position does). Replays run in order with the library's other work. */
#ifndef FP4LAB_GRAPH_H
#define FP4LAB_GRAPH_H

#include "core.h"

/* Starts recording this thread's CUDA calls (device must be FP4_DEVICE_CUDA). */
FP4_API fp4_status fp4_graph_begin(int32_t device);

/* Stops recording and returns the executable graph in *graph (release with fp4_graph_destroy).
 * When a call failed during the recording, returns that failure and no graph. */
FP4_API fp4_status fp4_graph_end(int32_t device, void **graph);

/* Runs a recorded graph once, asynchronously. */
FP4_API fp4_status fp4_graph_launch(int32_t device, void *graph);

/* Releases a graph from fp4_graph_end (null is a no-op). */
FP4_API fp4_status fp4_graph_destroy(int32_t device, void *graph);

#endif
