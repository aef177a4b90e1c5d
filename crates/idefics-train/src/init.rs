//! Random initialisation of a new Idefics2 model, as transformers 5.24's `_init_weights` does it.
//!
//! `PreTrainedModel._init_weights` (modeling_utils.py) with `Idefics2PreTrainedModel`'s additions:
//! * `nn.Linear` / `nn.Conv2d` weights ~ normal(0, initializer_range), biases 0;
//! * `nn.Embedding` ~ normal(0, initializer_range), with the `padding_idx` row zeroed (the text embeddings:
//!   Mistral passes `pad_token_id` as `padding_idx`; the vision position embedding has none);
//! * LayerNorm / RMSNorm weights 1 and biases 0 (matched by class name there, by tensor name here);
//! * `Idefics2PerceiverResampler.latents` ones ([`assemble`] can draw small random ones instead: [`LatentsInit`]).
//!
//! The set of tensors and their shapes come from building our model on a `VarMap`, so they are exactly the
//! ones our loader reads. Each tensor draws from its own stream, seeded by (seed, tensor name): initialising
//! a subset (see [`reinit_components`]) gives the same values as initialising everything.

use super::rng::TrainRng;
use super::TrainError;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use idefics::config::Idefics2Config;
use idefics::model::{Component, Idefics2ForConditionalGeneration, LoadOptions};
use rand::RngCore;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// transformers' default `initializer_range`.
pub const DEFAULT_INITIALIZER_RANGE: f64 = 0.02;

/// `initializer_range` of a raw config.json (top level, else the text config, else 0.02), as transformers
/// picks `self.config.initializer_range` and falls back to the text config's.
pub fn initializer_range(config_json: &Value) -> f64 {
    config_json
        .get("initializer_range")
        .and_then(Value::as_f64)
        .or_else(|| {
            config_json
                .get("text_config")
                .and_then(|t| t.get("initializer_range"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(DEFAULT_INITIALIZER_RANGE)
}

/// Names and shapes of every tensor our loader reads for `config` (sorted by name).
pub fn parameter_shapes(
    config: &Idefics2Config,
) -> Result<BTreeMap<String, Vec<usize>>, TrainError> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let opts = LoadOptions {
        dtype: DType::F32,
        device: Device::Cpu,
        ..Default::default()
    };
    Idefics2ForConditionalGeneration::new(config, vb, &opts)
        .map_err(|e| TrainError::Invalid(format!("cannot build the model from the config: {e}")))?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| TrainError::Invalid("VarMap lock poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(name, var)| (name.clone(), var.dims().to_vec()))
        .collect())
}

/// How a tensor is initialised, decided from its name as `_init_weights` decides from the module type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitRule {
    Zeros,
    Ones,
    Normal { std: f64 },
}

/// The rule for tensor `name`.
pub fn init_rule(name: &str, std: f64) -> InitRule {
    if name.ends_with(".bias") {
        InitRule::Zeros
    } else if name.ends_with("perceiver_resampler.latents")
        || (name.ends_with(".weight")
            && name
                .rsplit('.')
                .nth(1)
                .is_some_and(|module| module.contains("norm")))
    {
        // Latents: `init.ones_`; norm weights: "LayerNorm"/"RMSNorm" class names get ones.
        InitRule::Ones
    } else {
        InitRule::Normal { std }
    }
}

/// FNV-1a of the name: a stable per-tensor seed offset.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `n` normal(0, std) samples from tensor `name`'s own stream (seeded by `seed` and the name).
fn tensor_normal_samples(name: &str, n: usize, std: f64, seed: u64) -> Vec<f32> {
    normal_samples(&mut TrainRng::seed_from_u64(seed ^ name_hash(name)), n, std)
}

/// Standard normal samples (Box-Muller on the tensor's own stream).
fn normal_samples(rng: &mut TrainRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // u1 in (0, 1] so ln(u1) is finite.
        let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos() * std) as f32);
        out.push((r * th.sin() * std) as f32);
    }
    out.truncate(n);
    out
}

/// One freshly initialised tensor (f32).
pub fn init_tensor(
    name: &str,
    shape: &[usize],
    std: f64,
    pad_token_id: Option<u32>,
    seed: u64,
    device: &Device,
) -> Result<Tensor, TrainError> {
    let n: usize = shape.iter().product();
    let t = match init_rule(name, std) {
        InitRule::Zeros => Tensor::zeros(shape, DType::F32, device)?,
        InitRule::Ones => Tensor::ones(shape, DType::F32, device)?,
        InitRule::Normal { std } => {
            let mut v = tensor_normal_samples(name, n, std, seed);
            if name == "model.text_model.embed_tokens.weight" {
                // nn.Embedding(padding_idx=pad_token_id): the pad row starts at zero.
                if let (Some(pad), Some(&width)) = (pad_token_id, shape.last()) {
                    let start = pad as usize * width;
                    if let Some(row) = v.get_mut(start..start + width) {
                        row.fill(0.0);
                    }
                }
            }
            Tensor::from_vec(v, shape, device)?
        }
    };
    Ok(t)
}

/// All tensors of a new model for `config`, initialised as transformers does (f32).
pub fn init_weights(
    config: &Idefics2Config,
    std: f64,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let pad = config.text_config.pad_token_id;
    parameter_shapes(config)?
        .into_iter()
        .map(|(name, shape)| {
            let t = init_tensor(&name, &shape, std, pad, seed, device)?;
            Ok((name, t))
        })
        .collect()
}

/// Replaces the tensors of `components` in `tensors` by fresh ones (adding any that are missing), leaving the
/// others untouched. Used to assemble a VLM from pre-trained backbones and a new connector. Returns how many
/// tensors were (re)initialised.
pub fn reinit_components(
    tensors: &mut HashMap<String, Tensor>,
    config: &Idefics2Config,
    components: &[Component],
    std: f64,
    seed: u64,
    device: &Device,
) -> Result<usize, TrainError> {
    let pad = config.text_config.pad_token_id;
    let mut n = 0;
    for (name, shape) in parameter_shapes(config)? {
        if Component::of(&name).is_some_and(|c| components.contains(&c)) {
            tensors.insert(
                name.clone(),
                init_tensor(&name, &shape, std, pad, seed, device)?,
            );
            n += 1;
        }
    }
    Ok(n)
}

/// How the perceiver's latents start.
///
/// transformers fills them with ones. From scratch at toy scale that is a trap: the 16 latents are identical
/// queries and keys, and the residual stream starts as the latents (RMS 1) against an attention output of RMS
/// ~0.07. On recipes/tiny, stage 1 drove every latent to attend only to the latents (context attention mass
/// 0.000, scores -6 vs +6), so the perceiver's output no longer depended on the image and nothing after it
/// could learn from images. Small random latents keep the output image-dependent (92-93% of the attention mass on
/// the image after the same stage 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatentsInit {
    /// All ones, as transformers' `_init_weights`.
    Ones,
    /// Normal(0, std), drawn from the tensor's own seeded stream.
    Normal { std: f64 },
}

/// Sets `model.connector.perceiver_resampler.latents` in `tensors` as `how` says.
pub fn init_latents(
    tensors: &mut HashMap<String, Tensor>,
    config: &Idefics2Config,
    how: LatentsInit,
    seed: u64,
    device: &Device,
) -> Result<(), TrainError> {
    const NAME: &str = "model.connector.perceiver_resampler.latents";
    let shape = [
        config.perceiver_config.resampler_n_latents,
        config.perceiver_config.hidden_size,
    ];
    let t = match how {
        LatentsInit::Ones => Tensor::ones(&shape[..], DType::F32, device)?,
        LatentsInit::Normal { std } => Tensor::from_vec(
            tensor_normal_samples(NAME, shape[0] * shape[1], std, seed),
            &shape[..],
            device,
        )?,
    };
    tensors.insert(NAME.to_string(), t);
    Ok(())
}

/// Multiplies the query and key projections of every perceiver layer by `factor`. At initializer_range 0.02
/// the perceiver's attention logits have a standard deviation of about 0.1: every latent attends almost
/// uniformly, i.e. takes the mean of the image's patches, and sharpening the logits enough to pick out the
/// few patches that carry an outline takes AdamW hundreds of steps (on recipes/tiny, a connector trained on
/// the shape label alone sits near 0.45 for ~700 steps at factor 1 and passes 0.70 after ~400 at factor 5:
/// tools/research/tiny_alignment/connector_probe.py --qk-scale). Returns how many tensors were scaled.
pub fn scale_perceiver_qk(
    tensors: &mut HashMap<String, Tensor>,
    config: &Idefics2Config,
    factor: f64,
) -> Result<usize, TrainError> {
    if !factor.is_finite() || factor <= 0.0 {
        return Err(TrainError::Invalid(format!(
            "the perceiver q/k scale must be a positive number, got {factor}"
        )));
    }
    let mut n = 0;
    for layer in 0..config.perceiver_config.resampler_depth {
        for proj in ["q_proj", "k_proj"] {
            let name = format!(
                "model.connector.perceiver_resampler.layers.{layer}.self_attn.{proj}.weight"
            );
            let t = tensors
                .get(&name)
                .ok_or_else(|| TrainError::Invalid(format!("tensor {name} is missing")))?;
            let scaled = (t * factor)?;
            tensors.insert(name, scaled);
            n += 1;
        }
    }
    Ok(n)
}

/// The VLM of the paper's recipe: text model, embeddings and lm_head from `text`, the vision tower from
/// `vision`, and a new connector (modality projection + perceiver) drawn with `seed`, its latents by `latents`.
/// Anything else in the two inputs is dropped; the result is checked against `config`. Returns the tensors and
/// how many are new.
pub fn assemble(
    text: HashMap<String, Tensor>,
    vision: HashMap<String, Tensor>,
    config: &Idefics2Config,
    std: f64,
    latents: LatentsInit,
    seed: u64,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, usize), TrainError> {
    let mut tensors: HashMap<String, Tensor> = text
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                Component::of(k),
                Some(Component::Text | Component::Embeddings | Component::LmHead)
            )
        })
        .collect();
    tensors.extend(
        vision
            .into_iter()
            .filter(|(k, _)| Component::of(k) == Some(Component::Vision)),
    );
    let n_new = reinit_components(
        &mut tensors,
        config,
        &[Component::Projection, Component::Perceiver],
        std,
        seed,
        device,
    )?;
    init_latents(&mut tensors, config, latents, seed, device)?;
    check_tensors(&tensors, config)?;
    Ok((tensors, n_new))
}

/// Checks that `tensors` holds exactly the tensors `config` needs, with their shapes; the error names the first
/// missing, unexpected or mis-shaped tensor.
pub fn check_tensors(
    tensors: &HashMap<String, Tensor>,
    config: &Idefics2Config,
) -> Result<(), TrainError> {
    let shapes = parameter_shapes(config)?;
    for (name, shape) in &shapes {
        match tensors.get(name) {
            None => return Err(TrainError::Invalid(format!("tensor {name} is missing"))),
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(TrainError::Invalid(format!(
                    "tensor {name} has shape {:?}, the config needs {shape:?}",
                    t.dims()
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !shapes.contains_key(*k)) {
        return Err(TrainError::Invalid(format!(
            "tensor {extra} is not part of a model with this config"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> Idefics2Config {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/e2e/tiny-chat/config.json"
        ))
        .unwrap();
        Idefics2Config::from_json_str(&text).unwrap()
    }

    #[test]
    fn rules_follow_init_weights() {
        let s = 0.02;
        assert_eq!(
            init_rule("model.vision_model.encoder.layers.0.layer_norm1.weight", s),
            InitRule::Ones
        );
        assert_eq!(
            init_rule("model.vision_model.post_layernorm.bias", s),
            InitRule::Zeros
        );
        assert_eq!(
            init_rule("model.connector.perceiver_resampler.latents", s),
            InitRule::Ones
        );
        assert_eq!(
            init_rule(
                "model.connector.perceiver_resampler.layers.0.input_latents_norm.weight",
                s
            ),
            InitRule::Ones
        );
        assert_eq!(init_rule("model.text_model.norm.weight", s), InitRule::Ones);
        assert_eq!(
            init_rule("model.vision_model.embeddings.patch_embedding.weight", s),
            InitRule::Normal { std: s }
        );
        assert_eq!(init_rule("lm_head.weight", s), InitRule::Normal { std: s });
    }

    #[test]
    fn init_covers_the_model_and_has_the_right_statistics() {
        let cfg = tiny_config();
        let t = init_weights(&cfg, 0.02, 7, &Device::Cpu).unwrap();
        check_tensors(&t, &cfg).unwrap();
        // The reference fixture has the same tensor set.
        let fixture = super::super::hf_checkpoint::load_tensors(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/e2e/tiny-chat"
            )),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let mut a: Vec<_> = t.keys().collect();
        let mut b: Vec<_> = fixture.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let emb = t["model.text_model.embed_tokens.weight"]
            .to_vec2::<f32>()
            .unwrap();
        assert!(emb[0].iter().all(|&x| x == 0.0), "pad row zeroed");
        let flat: Vec<f32> = emb[1..].iter().flatten().copied().collect();
        let n = flat.len() as f64;
        let mean = flat.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (flat.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.002, "mean {mean}");
        assert!((sd - 0.02).abs() < 0.001, "std {sd}");
        let ones = t["model.connector.perceiver_resampler.latents"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(ones.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn reinit_touches_only_the_chosen_components_and_matches_full_init() {
        let cfg = tiny_config();
        let full = init_weights(&cfg, 0.02, 3, &Device::Cpu).unwrap();
        let mut other = init_weights(&cfg, 0.02, 4, &Device::Cpu).unwrap();
        let n = reinit_components(
            &mut other,
            &cfg,
            &[Component::Projection, Component::Perceiver],
            0.02,
            3,
            &Device::Cpu,
        )
        .unwrap();
        assert!(n > 0);
        let same = |name: &str, a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>| {
            let x = a[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            x == y
        };
        let conn = "model.connector.modality_projection.gate_proj.weight";
        let vis = "model.vision_model.encoder.layers.0.self_attn.q_proj.weight";
        assert!(same(conn, &full, &other), "connector re-drawn with seed 3");
        assert!(!same(vis, &full, &other), "vision kept from seed 4");
    }

    #[test]
    fn perceiver_qk_scaling_touches_only_the_queries_and_keys() {
        let cfg = tiny_config();
        let before = init_weights(&cfg, 0.02, 5, &Device::Cpu).unwrap();
        let mut after = before.clone();
        let n = scale_perceiver_qk(&mut after, &cfg, 5.0).unwrap();
        assert_eq!(n, 2 * cfg.perceiver_config.resampler_depth);
        let v = |m: &HashMap<String, Tensor>, k: &str| {
            m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let mut scaled = 0;
        for k in before.keys() {
            let (b, a) = (v(&before, k), v(&after, k));
            if k.starts_with("model.connector.perceiver_resampler.layers.")
                && (k.ends_with("self_attn.q_proj.weight")
                    || k.ends_with("self_attn.k_proj.weight"))
            {
                scaled += 1;
                assert!(
                    b.iter()
                        .zip(&a)
                        .all(|(x, y)| (5.0 * x - y).abs() <= 1e-6 * y.abs().max(1.0)),
                    "{k}"
                );
                assert!(b.iter().any(|x| *x != 0.0), "{k}");
            } else {
                assert_eq!(b, a, "{k} must not change");
            }
        }
        assert_eq!(scaled, n);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = scale_perceiver_qk(&mut after, &cfg, bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("q/k scale"), "{err}");
        }
    }

    #[test]
    fn assemble_takes_each_backbone_from_its_checkpoint() {
        let cfg = tiny_config();
        let dev = Device::Cpu;
        let text = init_weights(&cfg, 0.02, 1, &dev).unwrap();
        let vision = init_weights(&cfg, 0.02, 2, &dev).unwrap();
        let fresh = init_weights(&cfg, 0.02, 9, &dev).unwrap();
        let (out, n_new) = assemble(
            text.clone(),
            vision.clone(),
            &cfg,
            0.02,
            LatentsInit::Ones,
            9,
            &dev,
        )
        .unwrap();
        assert_eq!(out.len(), text.len());
        let v = |m: &HashMap<String, Tensor>, k: &str| {
            m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        for (k, _) in out.iter() {
            let want = match Component::of(k) {
                Some(Component::Text | Component::Embeddings | Component::LmHead) => &text,
                Some(Component::Vision) => &vision,
                _ => &fresh,
            };
            assert_eq!(v(&out, k), v(want, k), "{k}");
        }
        assert_eq!(
            n_new,
            out.keys()
                .filter(|k| k.starts_with("model.connector."))
                .count()
        );
        // A vision checkpoint of another shape is refused by name.
        let mut bad = vision;
        bad.insert(
            "model.vision_model.post_layernorm.weight".into(),
            Tensor::ones(3, DType::F32, &dev).unwrap(),
        );
        let e = assemble(text, bad, &cfg, 0.02, LatentsInit::Ones, 9, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("post_layernorm"), "{e}");
    }

    #[test]
    fn normal_latents_are_distinct_small_and_seeded() {
        let cfg = tiny_config();
        let dev = Device::Cpu;
        let text = init_weights(&cfg, 0.02, 1, &dev).unwrap();
        let how = LatentsInit::Normal { std: 0.02 };
        let draw = |seed| {
            let (out, _) =
                assemble(text.clone(), text.clone(), &cfg, 0.02, how, seed, &dev).unwrap();
            out["model.connector.perceiver_resampler.latents"]
                .to_vec2::<f32>()
                .unwrap()
        };
        let a = draw(9);
        assert_eq!(a, draw(9), "same seed, same latents");
        assert_ne!(a, draw(10), "another seed, other latents");
        let flat: Vec<f32> = a.iter().flatten().copied().collect();
        let n = flat.len() as f32;
        let mean = flat.iter().sum::<f32>() / n;
        let std = (flat.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(
            mean.abs() < 0.005 && (std - 0.02).abs() < 0.005,
            "mean {mean} std {std}"
        );
        // No two latents are equal: they are distinct queries from the start.
        for i in 0..a.len() {
            for j in i + 1..a.len() {
                assert_ne!(a[i], a[j], "latents {i} and {j}");
            }
        }
    }
}
