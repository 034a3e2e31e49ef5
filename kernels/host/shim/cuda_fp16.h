// Host stand-in for <cuda_fp16.h>, so that kernels/quant.cuh compiles with a plain C++ compiler for
// the format tests (quant_host.cpp). Only what quant.cuh uses; conversions follow IEEE 754 binary16.
#pragma once
#include <stdint.h>
#include <string.h>

#define __device__
#define __host__
#define __forceinline__ inline

struct __half { uint16_t bits; };
struct __half2 { __half x, y; };
struct float2 { float x, y; };
struct uint4 { uint32_t x, y, z, w; };

static inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t) (h.bits >> 15) << 31;
    int exponent = (h.bits >> 10) & 0x1F;
    uint32_t mantissa = h.bits & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((uint32_t) (exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else { // subnormal: normalize
        exponent = 113;
        while ((mantissa & 0x400) == 0) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | ((uint32_t) exponent << 23) | ((mantissa & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Separately rounded float operations (the device's way of saying "do not fuse").
static inline float __fmul_rn(float a, float b) {
    volatile float p = a * b;
    return p;
}

static inline float __fsub_rn(float a, float b) {
    volatile float d = a - b;
    return d;
}

static inline __half __ushort_as_half(uint16_t bits) { return __half{bits}; }

static inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }

static inline float __uint_as_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
