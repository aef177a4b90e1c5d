//! Work of each benchmarked phase for a checkpoint's shapes: FLOPs of the matrix products (an FMA counts 2;
//! norms, activations and softmax are left out, so fractions of peak are slight underestimates) and bytes a
//! decoding step must read from memory. The text model's counts ([`prefill_flops`], [`decode_bytes_per_token`])
//! hold for every family (Mistral and Llama decoders have the same matrices); the vision side has one count per
//! connector ([`vision_connector_flops`]: perceiver, [`pixel_shuffle_vision_flops`]: pixel shuffle).

use crate::config::{Idefics2Config, TextConfig, VisionConfig};
use crate::model::idefics3_config::Idefics3Config;

/// FLOPs of the SigLIP tower on one image of `s` patches: the patch embedding, then per layer the q, k, v, out
/// projections and the MLP, and Q K^T and P V over all `s` keys.
fn vision_tower_flops(v: &VisionConfig, s: f64) -> f64 {
    let (dv, iv) = (v.hidden_size as f64, v.intermediate_size as f64);
    let patch_in = (v.num_channels * v.patch_size * v.patch_size) as f64;
    let embed = 2.0 * s * patch_in * dv;
    let layer = 2.0 * s * (4.0 * dv * dv + 2.0 * dv * iv) + 4.0 * s * s * dv;
    embed + v.num_hidden_layers as f64 * layer
}

/// FLOPs of the vision tower and the connector for images of `patches[i]` valid patches each (each image runs
/// alone at its valid size, as `model/vision.rs` does).
pub fn vision_connector_flops(cfg: &Idefics2Config, patches: &[usize]) -> f64 {
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let p = &cfg.perceiver_config;
    let dv = v.hidden_size as f64;
    let (dt, it) = (t.hidden_size as f64, t.intermediate_size as f64);
    let lat = p.resampler_n_latents as f64;
    let (ph, pkv, phd) = (
        p.resampler_n_heads as f64,
        p.num_key_value_heads as f64,
        p.resampler_head_dim as f64,
    );
    let mut total = 0.0;
    for &s in patches {
        let s = s as f64;
        let projection = 2.0 * s * (2.0 * dv * it + it * dt);
        // Latents attend to [context; latents]; the perceiver MLP is 4x wide (connector.rs).
        let kv_len = s + lat;
        let perceiver_layer = 2.0 * lat * dt * ph * phd
            + 2.0 * 2.0 * kv_len * dt * pkv * phd
            + 4.0 * lat * kv_len * ph * phd
            + 2.0 * lat * ph * phd * dt
            + 2.0 * lat * 3.0 * dt * 4.0 * dt;
        total += vision_tower_flops(v, s) + projection + p.resampler_depth as f64 * perceiver_layer;
    }
    total
}

/// FLOPs of the Idefics3 / SmolVLM vision tower and connector for frames (tiles or whole images) of
/// `patches[i]` patches each. The tower runs every patch of a frame's grid (`model/idefics3.rs`: invalid patches
/// are masked, not dropped); the pixel shuffle only moves values, so the connector is the one bias-free
/// projection `[Dv r^2 -> Dt]` on `s / r^2` tokens, i.e. `2 s Dv Dt` (`model/pixel_shuffle.rs`).
pub fn pixel_shuffle_vision_flops(cfg: &Idefics3Config, patches: &[usize]) -> f64 {
    let v = &cfg.vision_config;
    let (dv, dt) = (v.hidden_size as f64, cfg.text_config.hidden_size as f64);
    patches
        .iter()
        .map(|&s| {
            let s = s as f64;
            vision_tower_flops(v, s) + 2.0 * s * dv * dt
        })
        .sum()
}

/// FLOPs of a causal forward over `tokens` new tokens after `past` cached ones, with the lm head on
/// `logit_rows` positions (all of them for `idefics bench`'s prefill, as transformers computes).
/// The decoder's sizes are `t` (any family: `head_dim` and the kv heads come from the config).
pub fn prefill_flops(t: &TextConfig, past: usize, tokens: usize, logit_rows: usize) -> f64 {
    let (d, i) = (t.hidden_size as f64, t.intermediate_size as f64);
    let (h, kv, hd) = (
        t.num_attention_heads as f64,
        t.num_key_value_heads as f64,
        t.head_dim as f64,
    );
    let per_token = 2.0 * (d * h * hd + 2.0 * d * kv * hd + h * hd * d + 3.0 * d * i);
    // Query at absolute position j sees j + 1 keys (or the window): Q K^T and P V, 2 FLOPs each per key.
    let keys: f64 = (past..past + tokens)
        .map(|j| (j + 1).min(t.sliding_window.unwrap_or(usize::MAX)) as f64)
        .sum();
    let attention = 4.0 * h * hd * keys;
    t.num_hidden_layers as f64 * (tokens as f64 * per_token + attention)
        + 2.0 * logit_rows as f64 * d * t.vocab_size as f64
}

/// Bytes one decoding step reads: every weight of the decoder and the lm head once, one embedding row, and the
/// cached keys and values of `context` positions; `bytes_per_value` is 4 for f32.
/// A tied head is the embedding matrix: it is read once either way.
pub fn decode_bytes_per_token(t: &TextConfig, context: usize, bytes_per_value: usize) -> f64 {
    let (d, i, h, kv, hd) = (
        t.hidden_size,
        t.intermediate_size,
        t.num_attention_heads,
        t.num_key_value_heads,
        t.head_dim,
    );
    let layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * i + 2 * d;
    let weights = t.num_hidden_layers * layer + d * t.vocab_size + 2 * d;
    let window = context.min(t.sliding_window.unwrap_or(usize::MAX));
    let cache = t.num_hidden_layers * 2 * kv * hd * window;
    ((weights + cache) * bytes_per_value) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench_150m() -> Idefics2Config {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/reference/bench_config/bench-150m/config.json"
        );
        Idefics2Config::from_file(std::path::Path::new(path)).expect("bench-150m config")
    }

    #[test]
    fn decode_bytes_count_the_text_weights_and_the_lm_head() {
        let cfg = bench_150m();
        // tools/reference/bench_config/README.md: text 54.15 M parameters (16.39 M of them the embedding, read
        // one row a token) + lm head 16.39 M.
        let bytes = decode_bytes_per_token(&cfg.text_config, 0, 4);
        let params = bytes / 4.0;
        let expected = 54.15e6 - 16.39e6 + 16.39e6;
        assert!((params - expected).abs() / expected < 0.01, "{params}");
        // 512 cached positions add 12 layers x 2 x 4 kv heads x 64 x 512 values.
        let with_cache = decode_bytes_per_token(&cfg.text_config, 512, 4) - bytes;
        assert_eq!(with_cache, (12 * 2 * 4 * 64 * 512 * 4) as f64);
    }

    #[test]
    fn prefill_flops_are_twice_the_parameters_per_token_plus_attention() {
        let cfg = bench_150m();
        let one = prefill_flops(&cfg.text_config, 0, 1, 1);
        let params = 54.15e6 - 16.39e6 + 16.39e6;
        // One token: 2 FLOPs a weight (the embedding is a lookup) and 12 layers x 4 x 8 heads x 64 of attention.
        let expected = 2.0 * params + 12.0 * 4.0 * 8.0 * 64.0;
        assert!(
            (one - expected).abs() / expected < 0.01,
            "{one} vs {expected}"
        );
    }

    #[test]
    fn vision_flops_grow_quadratically_in_attention_only() {
        let cfg = bench_150m();
        let a = vision_connector_flops(&cfg, &[1000]);
        let b = vision_connector_flops(&cfg, &[2000]);
        let two = vision_connector_flops(&cfg, &[1000, 1000]);
        assert!(b > 2.0 * a && (two - 2.0 * a).abs() < 1e-6 * a);
        // ~ 2 FLOPs a vision weight a patch: 89 M parameters -> ~178 MFLOP a patch before attention.
        assert!(a / 1000.0 > 1.5e8 && a / 1000.0 < 3.0e8, "{}", a / 1000.0);
    }

    /// A tiny Idefics3 whose counts are worked out by hand: head_dim 4 differs from hidden / heads (= 3), and
    /// one kv head serves two query heads.
    fn tiny_idefics3() -> Idefics3Config {
        Idefics3Config::from_json_str(
            r#"{"model_type": "idefics3", "scale_factor": 2, "image_token_id": 19,
                "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "num_channels": 3, "patch_size": 2, "image_size": 8},
                "text_config": {"model_type": "llama", "hidden_size": 6, "intermediate_size": 10,
                    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
                    "vocab_size": 20}}"#,
        )
        .expect("tiny idefics3 config")
    }

    #[test]
    fn pixel_shuffle_vision_flops_match_a_hand_count() {
        let cfg = tiny_idefics3();
        // One 8x8 tile = 16 patches of 2x2x3 = 12 values. Embedding 2*16*12*8 = 3072; the layer's projections
        // 2*16*(4*8*8 + 2*8*16) = 16384 and attention 4*16^2*8 = 8192; the connector projects 16/4 = 4 tokens
        // of 8*4 = 32 values to 6: 2*4*32*6 = 1536.
        let one_tile = 3072.0 + 16384.0 + 8192.0 + 1536.0;
        assert_eq!(pixel_shuffle_vision_flops(&cfg, &[16]), one_tile);
        assert_eq!(pixel_shuffle_vision_flops(&cfg, &[16, 16]), 2.0 * one_tile);
        assert_eq!(pixel_shuffle_vision_flops(&cfg, &[]), 0.0);
    }

    #[test]
    fn llama_prefill_flops_use_head_dim_and_kv_heads_from_the_config() {
        let t = tiny_idefics3().text_config;
        // Per token: q 6x(2*4), k and v 6x(1*4) each, o (2*4)x6, MLP 3x6x10, 2 FLOPs a weight:
        // 2*(48 + 48 + 48 + 180) = 648. Three tokens see 1 + 2 + 3 keys: 4 FLOPs x 2 heads x 4 x 6 = 192.
        // Logits at the three positions: 2*3*6*20 = 720.
        assert_eq!(prefill_flops(&t, 0, 3, 3), 3.0 * 648.0 + 192.0 + 720.0);
        // Decoding reads the layer's matrices and its two norms (2 x 6), the head (6 x 20), the final norm and
        // one embedding row (2 x 6), and 1 layer x (k, v) x 1 kv head x 4 cached values a position.
        let weights = 48 + 48 + 48 + 180 + 2 * 6 + 6 * 20 + 2 * 6;
        assert_eq!(
            decode_bytes_per_token(&t, 5, 4),
            ((weights + 2 * 4 * 5) * 4) as f64
        );
    }
}
