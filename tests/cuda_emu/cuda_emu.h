// A small emulation of the CUDA execution model on the CPU (docs/architecture.md, "CUDA
// kernels and their CPU emulation"), so that kernels/*.cu compile unchanged with the host C++
// compiler and run in the tests.
//
// - A launch runs the blocks of the grid one after another.  The threads of a block are
//   std::threads (created once per launch and reused for every block); __syncthreads is a
//   barrier over the block's threads still running; a thread that returns from the kernel
//   leaves the block's barrier (and its warp's), as exited threads do on a GPU.
// - Warps are 32 consecutive linear thread ids; __shfl_*_sync exchange values through a
//   per-warp slot array between two barriers over the warp's lanes (all lanes of the mask
//   must take part, as the kernels here do).
// - `__shared__` variables become function-local statics, so every thread of the running
//   block sees the same storage; blocks run one at a time, so that is per block.
// - threadIdx / blockIdx are thread-locals; blockDim / gridDim are per launch.  Launches are
//   serialized by a mutex.
// A barrier that waits for more than EMU_TIMEOUT_S seconds aborts with a message (a kernel
// whose threads diverge around __syncthreads would otherwise hang the tests).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <mutex>
#include <thread>
#include <vector>

#ifndef EMU_TIMEOUT_S
#define EMU_TIMEOUT_S 60
#endif

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};

namespace emu {

class Barrier {
  public:
    void reset(int expected) {
        std::lock_guard<std::mutex> lock(m_);
        expected_ = expected;
        count_ = 0;
    }
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(m_);
        const long long gen = gen_;
        if (++count_ >= expected_) {
            release();
            return;
        }
        const auto deadline =
            std::chrono::steady_clock::now() + std::chrono::seconds(EMU_TIMEOUT_S);
        while (gen_ == gen) {
            if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && gen_ == gen) {
                std::fprintf(stderr,
                             "cuda_emu: barrier timed out (%d of %d arrived): threads diverged "
                             "around __syncthreads or a warp shuffle\n",
                             count_, expected_);
                std::abort();
            }
        }
    }
    // A thread leaves for good (returned from the kernel).
    void drop() {
        std::lock_guard<std::mutex> lock(m_);
        --expected_;
        if (count_ > 0 && count_ >= expected_) release();
    }

  private:
    void release() {
        count_ = 0;
        ++gen_;
        cv_.notify_all();
    }
    std::mutex m_;
    std::condition_variable cv_;
    int expected_ = 0;
    int count_ = 0;
    long long gen_ = 0;
};

struct Launch {
    dim3 grid, block;
    int nthreads = 0, nwarps = 0;
    Barrier block_bar;                 // __syncthreads
    Barrier boundary;                  // between blocks (all threads, never dropped)
    std::vector<Barrier> warp_bars;    // one per warp
    std::vector<uint64_t> slots;       // 32 per warp
};

inline Launch*& current() {
    static Launch* l = nullptr;
    return l;
}
inline thread_local dim3 tl_threadIdx;
inline thread_local dim3 tl_blockIdx;
inline thread_local int tl_tid = 0;
inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}
inline dim3& g_blockDim() {
    static dim3 d;
    return d;
}
inline dim3& g_gridDim() {
    static dim3 d;
    return d;
}

inline void syncthreads() { current()->block_bar.arrive_and_wait(); }

inline void syncwarp() { current()->warp_bars[tl_tid / 32].arrive_and_wait(); }

template <typename T>
inline T shfl_from(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    Launch* l = current();
    const int warp = tl_tid / 32, lane = tl_tid % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    l->slots[warp * 32 + lane] = bits;
    l->warp_bars[warp].arrive_and_wait();
    T out = v;
    if (src_lane >= 0 && src_lane < 32 && warp * 32 + src_lane < l->nthreads) {
        const uint64_t b = l->slots[warp * 32 + src_lane];
        std::memcpy(&out, &b, sizeof(T));
    }
    l->warp_bars[warp].arrive_and_wait();
    return out;
}

// Run `body` as the kernel for every thread of every block of the grid.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    std::lock_guard<std::mutex> guard(launch_mutex());
    Launch l;
    l.grid = grid;
    l.block = block;
    l.nthreads = (int)(block.x * block.y * block.z);
    if (l.nthreads < 1 || l.nthreads > 1024) {
        std::fprintf(stderr, "cuda_emu: bad block size %d\n", l.nthreads);
        std::abort();
    }
    l.nwarps = (l.nthreads + 31) / 32;
    l.warp_bars = std::vector<Barrier>(l.nwarps);
    l.slots.assign((size_t)l.nwarps * 32, 0);
    l.boundary.reset(l.nthreads);
    auto reset_block = [&l]() {
        l.block_bar.reset(l.nthreads);
        for (int w = 0; w < l.nwarps; ++w) {
            const int lanes = (w + 1) * 32 <= l.nthreads ? 32 : l.nthreads - w * 32;
            l.warp_bars[w].reset(lanes);
        }
    };
    reset_block();
    current() = &l;
    g_blockDim() = block;
    g_gridDim() = grid;
    const long long nblocks = (long long)grid.x * grid.y * grid.z;
    auto worker = [&](int tid) {
        tl_tid = tid;
        tl_threadIdx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
        for (long long b = 0; b < nblocks; ++b) {
            tl_blockIdx = dim3((unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                               (unsigned)(b / ((long long)grid.x * grid.y)));
            body();
            l.block_bar.drop();
            l.warp_bars[tid / 32].drop();
            l.boundary.arrive_and_wait();
            if (tid == 0) reset_block();
            l.boundary.arrive_and_wait();
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(l.nthreads);
    for (int t = 0; t < l.nthreads; ++t) threads.emplace_back(worker, t);
    for (auto& t : threads) t.join();
    current() = nullptr;
}

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx (::emu::tl_threadIdx)
#define blockIdx (::emu::tl_blockIdx)
#define blockDim (::emu::g_blockDim())
#define gridDim (::emu::g_gridDim())

inline void __syncthreads() { ::emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::emu::syncwarp(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    const int lane = ::emu::tl_tid % 32;
    return ::emu::shfl_from(v, (lane / width) * width + (src % width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int lane = ::emu::tl_tid % 32;
    const int src = lane ^ mask;
    // lanes outside the caller's width segment read their own value, as on a GPU
    return ::emu::shfl_from(v, (src / width == lane / width) ? src : lane);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int lane = ::emu::tl_tid % 32;
    const int src = lane + (int)delta;
    return ::emu::shfl_from(v, (src / width == lane / width) ? src : lane);
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, sizeof i);
    return i;
}
inline float __int_as_float(unsigned u) { return __int_as_float((int)u); }
