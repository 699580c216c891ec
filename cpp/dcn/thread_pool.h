// A tiny persistent thread pool for the CPU kernels.
//
// Why not OpenMP: torch ships its own libgomp; a second OpenMP runtime in the same process can
// oversubscribe or clash. A private std::thread pool has no such interaction, and keeping its
// threads alive avoids paying thread creation on every call (the op is called once per block
// of output rows).
#pragma once

#include <functional>

namespace vsqe {
namespace dcn {

// Runs fn(task) for every task in [0, ntasks) using up to `nthreads` threads (the calling
// thread included) and returns when all tasks are done. Tasks are handed out dynamically.
// Calls from several threads at once are serialised. nthreads <= 1 runs inline.
void parallel_for(int nthreads, int ntasks, const std::function<void(int)>& fn);

// Number of hardware threads (at least 1).
int hardware_threads();

}  // namespace dcn
}  // namespace vsqe
