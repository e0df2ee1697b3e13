/* SPDX-License-Identifier: Apache-2.0 */
/* Generated from shared/src/lib.rs by `UPDATE_FINGERPRINT_HEADER=1 cargo test -p shared`.
 * Do not edit: a test fails when this file and the Rust definition disagree. */
#ifndef FINGERPRINT_CONSTS_H
#define FINGERPRINT_CONSTS_H

#define FP_MARKER 0x80
/* MARKER in every byte, and the SWAR "has a zero byte" masks. */
#define FP_MARKER_BCAST 0x8080808080808080ULL
#define FP_ONES_BCAST 0x0101010101010101ULL
#define FP_HIGHS_BCAST 0x8080808080808080ULL
#define FP_SEED 0x415544494f4d4f4dULL
#define FP_WINDOW_MIN 16
#define FP_WINDOW_MAX 256

/* Defaults of FingerprintConfig (cluster-wide settings, overridable at load time). */
#define FP_DEFAULT_WINDOW 32
#define FP_DEFAULT_KEEP_PER_256 256
#define FP_DEFAULT_QUIET_THRESHOLD 300
#define FP_DEFAULT_MAX_STEP 16384

/* xxh64 primes (the signature is xxh64 of the window with FP_SEED). */
#define FP_XXH_PRIME64_1 0x9E3779B185EBCA87ULL
#define FP_XXH_PRIME64_2 0xC2B2AE3D27D4EB4FULL
#define FP_XXH_PRIME64_3 0x165667B19E3779F9ULL
#define FP_XXH_PRIME64_4 0x85EBCA77C2B2AE63ULL
#define FP_XXH_PRIME64_5 0x27D4EB2F165667C5ULL

#endif /* FINGERPRINT_CONSTS_H */
