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
struct float4 { float x, y, z, w; };
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return uint4{x, y, z, w}; }

// A read-only-cache load is a plain load on the host.
template <typename T> static inline T __ldg(const T * p) { return *p; }

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

static inline float __fadd_rn(float a, float b) {
    volatile float s = a + b;
    return s;
}

// float → binary16, round to nearest even (what __float2half_rn does on the device).
static inline __half __float2half_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t) ((x >> 16) & 0x8000);
    const uint32_t abs = x & 0x7FFFFFFF;
    if (abs >= 0x7F800000) { // inf or NaN
        return __half{(uint16_t) (sign | 0x7C00 | (abs > 0x7F800000 ? 0x200 : 0))};
    }
    if (abs >= 0x477FF000) { // rounds to >= 65520: overflow to infinity
        return __half{(uint16_t) (sign | 0x7C00)};
    }
    if (abs < 0x38800000) { // below the smallest normal half (2^-14): a subnormal half m·2^-24, or zero
        const int s = 126 - (int) (abs >> 23); // value = mant24·2^(e-23), so m = mant24 >> (-e - 1)
        if (s > 24) {
            return __half{sign};
        }
        const uint32_t mant24 = (abs & 0x7FFFFF) | 0x800000;
        uint32_t q = mant24 >> s;
        const uint32_t rest = mant24 & ((1u << s) - 1), half_ulp = 1u << (s - 1);
        if (rest > half_ulp || (rest == half_ulp && (q & 1))) {
            q++;
        }
        return __half{(uint16_t) (sign | q)};
    }
    uint32_t h = ((abs >> 13) - (112u << 10));
    const uint32_t rest = abs & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) {
        h++;
    }
    return __half{(uint16_t) (sign | h)};
}

static inline __half __ushort_as_half(uint16_t bits) { return __half{bits}; }

static inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }

static inline float __uint_as_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
