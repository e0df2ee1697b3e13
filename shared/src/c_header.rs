use crate::{
    FingerprintConfig, ANCHOR_VALUE, GATE_MULT, MARKER_MASK, MARKER_VALUE, PRE_GATE_SHIFT,
    PRE_GATE_VALUE, SEED, WINDOW_MAX, WINDOW_MIN,
};

/// The constants the eBPF side of the definition needs, as a C header. The committed
/// `bpf/fingerprint_consts.h` must equal this text (checked by a test), so C and Rust cannot drift.
pub fn c_header() -> String {
    let d = FingerprintConfig::default();
    let bcast = |b: u8| u64::from_ne_bytes([b; 8]);
    format!(
        r#"/* SPDX-License-Identifier: Apache-2.0 */
/* Generated from shared/src/lib.rs by `UPDATE_FINGERPRINT_HEADER=1 cargo test -p shared`.
 * Do not edit: a test fails when this file and the Rust definition disagree. */
#ifndef FINGERPRINT_CONSTS_H
#define FINGERPRINT_CONSTS_H

/* An anchor byte b, with p the byte two before it, has (b & FP_MARKER_MASK) == FP_MARKER_VALUE
 * and (p >> FP_PRE_GATE_SHIFT) == FP_PRE_GATE_VALUE; together,
 * ((b & FP_MARKER_MASK) | (p >> FP_PRE_GATE_SHIFT)) == FP_ANCHOR_VALUE. */
#define FP_MARKER_MASK 0x{MARKER_MASK:02x}
#define FP_MARKER_VALUE 0x{MARKER_VALUE:02x}
#define FP_PRE_GATE_SHIFT {PRE_GATE_SHIFT}
#define FP_PRE_GATE_VALUE {PRE_GATE_VALUE}
#define FP_ANCHOR_VALUE 0x{ANCHOR_VALUE:02x}
/* The same in every byte of a word, and the SWAR "has a zero byte" masks. */
#define FP_MARKER_MASK_BCAST 0x{mask_bcast:016x}ULL
#define FP_PRE_GATE_BITS_BCAST 0x{pre_bits:016x}ULL
#define FP_ANCHOR_VALUE_BCAST 0x{anchor_bcast:016x}ULL
#define FP_ONES_BCAST 0x{ones:016x}ULL
#define FP_HIGHS_BCAST 0x{highs:016x}ULL
#define FP_SEED 0x{SEED:016x}ULL
/* Sampling gate: (u64 of the 8 bytes ending at the anchor * FP_GATE_MULT) >> 56. */
#define FP_GATE_MULT 0x{GATE_MULT:016x}ULL
#define FP_WINDOW_MIN {WINDOW_MIN}
#define FP_WINDOW_MAX {WINDOW_MAX}

/* Defaults of FingerprintConfig (cluster-wide settings, overridable at load time). */
#define FP_DEFAULT_WINDOW {window}
#define FP_DEFAULT_KEEP_PER_256 {keep}
#define FP_DEFAULT_QUIET_THRESHOLD {quiet}
#define FP_DEFAULT_MAX_STEP {step}

/* xxh64 primes (the signature is xxh64 of the window with FP_SEED). */
#define FP_XXH_PRIME64_1 0x9E3779B185EBCA87ULL
#define FP_XXH_PRIME64_2 0xC2B2AE3D27D4EB4FULL
#define FP_XXH_PRIME64_3 0x165667B19E3779F9ULL
#define FP_XXH_PRIME64_4 0x85EBCA77C2B2AE63ULL
#define FP_XXH_PRIME64_5 0x27D4EB2F165667C5ULL

#endif /* FINGERPRINT_CONSTS_H */
"#,
        mask_bcast = bcast(MARKER_MASK),
        pre_bits = bcast(0xFF >> PRE_GATE_SHIFT),
        anchor_bcast = bcast(ANCHOR_VALUE),
        ones = bcast(0x01),
        highs = bcast(0x80),
        window = d.window,
        keep = d.keep_per_256,
        quiet = d.quiet_threshold,
        step = d.max_step,
    )
}
