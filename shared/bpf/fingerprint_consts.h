/* SPDX-License-Identifier: Apache-2.0 */
/* Generated from shared/src/lib.rs by `UPDATE_FINGERPRINT_HEADER=1 cargo test -p shared`.
 * Do not edit: a test fails when this file and the Rust definition disagree. */
#ifndef FINGERPRINT_CONSTS_H
#define FINGERPRINT_CONSTS_H

/* An anchor byte b, with p the byte two before it, has (b & FP_MARKER_MASK) == FP_MARKER_VALUE
 * and (p >> FP_PRE_GATE_SHIFT) == FP_PRE_GATE_VALUE; together,
 * ((b & FP_MARKER_MASK) | (p >> FP_PRE_GATE_SHIFT)) == FP_ANCHOR_VALUE. */
#define FP_MARKER_MASK 0xf8
#define FP_MARKER_VALUE 0x88
#define FP_PRE_GATE_SHIFT 5
#define FP_PRE_GATE_VALUE 5
#define FP_ANCHOR_VALUE 0x8d
/* The same in every byte of a word, and the SWAR "has a zero byte" masks. */
#define FP_MARKER_MASK_BCAST 0xf8f8f8f8f8f8f8f8ULL
#define FP_PRE_GATE_BITS_BCAST 0x0707070707070707ULL
#define FP_ANCHOR_VALUE_BCAST 0x8d8d8d8d8d8d8d8dULL
#define FP_ONES_BCAST 0x0101010101010101ULL
#define FP_HIGHS_BCAST 0x8080808080808080ULL
#define FP_SEED 0x415544494f4d4f4dULL
/* Sampling gate: (u64 of the 8 bytes ending at the anchor * FP_GATE_MULT) >> 56. */
#define FP_GATE_MULT 0x9e3779b97f4a7c15ULL
#define FP_WINDOW_MIN 16
#define FP_WINDOW_MAX 256

/* Defaults of FingerprintConfig (cluster-wide settings, overridable at load time). */
#define FP_DEFAULT_WINDOW 32
#define FP_DEFAULT_KEEP_PER_256 128
#define FP_DEFAULT_QUIET_THRESHOLD 300
#define FP_DEFAULT_MAX_STEP 16384

/* xxh64 primes (the signature is xxh64 of the window with FP_SEED). */
#define FP_XXH_PRIME64_1 0x9E3779B185EBCA87ULL
#define FP_XXH_PRIME64_2 0xC2B2AE3D27D4EB4FULL
#define FP_XXH_PRIME64_3 0x165667B19E3779F9ULL
#define FP_XXH_PRIME64_4 0x85EBCA77C2B2AE63ULL
#define FP_XXH_PRIME64_5 0x27D4EB2F165667C5ULL

#endif /* FINGERPRINT_CONSTS_H */
