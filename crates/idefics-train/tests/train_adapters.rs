//! LoRA / DoRA against peft 0.21.2: outputs, gradients, merge and adapter files.
//! Fixtures: tools/reference/make_train_fixtures.py (tests/fixtures/train/<case>/).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use idefics_train::adapters::{AdaptedLinear, LoraSettings};
use idefics_train::frozen::FrozenLinear;
use idefics_train::grad_check::check_gradient_flow;
use idefics_train::optimizer::{AdamW, AdamWConfig};
use idefics_train::peft::{ModuleSelector, PeftAdapter, PeftLoraConfig, PEFT_KEY_PREFIX};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train")
}

/// max |a - b| / max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .expect("a");
    let b = b
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .expect("b");
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let num = (&a - &b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(0))
        .expect("diff");
    let den = b.abs().and_then(|d| d.max(0)).expect("max");
    num.to_scalar::<f32>().expect("f32") / den.to_scalar::<f32>().expect("f32").max(1e-12)
}

/// The toy models of the fixture script, built from `AdaptedLinear` layers.
struct ToyModel {
    case: &'static str,
    layers: Vec<(String, AdaptedLinear)>,
}

impl ToyModel {
    fn module_paths(case: &str) -> Vec<&'static str> {
        if case.starts_with("mlp") {
            vec!["mlp.fc1", "mlp.fc2"]
        } else {
            vec!["proj"]
        }
    }

    fn bases(
        case: &str,
        dev: &Device,
    ) -> Result<Vec<(String, FrozenLinear)>, Box<dyn std::error::Error>> {
        let base =
            candle_core::safetensors::load(fixtures().join(case).join("base.safetensors"), dev)?;
        Self::module_paths(case)
            .into_iter()
            .map(|p| {
                let w = base[&format!("{p}.weight")].clone();
                let b = base.get(&format!("{p}.bias")).cloned();
                Ok((p.to_string(), FrozenLinear::new(w, b)?))
            })
            .collect()
    }

    fn from_adapter(
        case: &'static str,
        adapter: &PeftAdapter,
        dev: &Device,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut layers = Vec::new();
        for (path, base) in Self::bases(case, dev)? {
            assert!(adapter.config.targets(&path)?, "{path} should be targeted");
            layers.push((path.clone(), adapter.adapt(&path, base)?));
        }
        Ok(Self { case, layers })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.case.starts_with("mlp") {
            let h = self.layers[0].1.forward_t(x, true)?.tanh()?;
            self.layers[1].1.forward_t(&h, true)
        } else {
            self.layers[0].1.forward_t(x, true)
        }
    }

    /// (peft key, var) of every trainable tensor.
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (path, layer) in &self.layers {
            for (suffix, var) in layer.trainable_vars() {
                out.push((format!("{PEFT_KEY_PREFIX}{path}.{suffix}"), var.clone()));
            }
        }
        out
    }
}

const CASES: [&str; 3] = ["linear_lora", "linear_dora", "mlp_dora_rslora"];

type CaseRun = (ToyModel, HashMap<String, Tensor>, Var, GradStore);

fn run_case(case: &'static str) -> Result<CaseRun, Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let reference =
        candle_core::safetensors::load(fixtures().join(case).join("reference.safetensors"), &dev)?;
    let adapter = PeftAdapter::load(&fixtures().join(case), &dev)?;
    let model = ToyModel::from_adapter(case, &adapter, &dev)?;
    let x = Var::from_tensor(&reference["x"])?;
    let out = model.forward(x.as_tensor())?;
    let loss = (&out - &reference["target"])?.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let r = rel_diff(&out, &reference["out"]);
    assert!(r <= 1e-5, "{case}: output rel diff {r}");
    let r = rel_diff(&loss.reshape(1)?, &reference["loss"]);
    assert!(r <= 1e-5, "{case}: loss rel diff {r}");
    Ok((model, reference, x, grads))
}

#[test]
fn outputs_and_gradients_match_peft() -> TestResult {
    for case in CASES {
        let (model, reference, x, grads) = run_case(case)?;
        let vars = model.named_vars();
        let expected = if case.contains("dora") { 3 } else { 2 } * model.layers.len();
        assert_eq!(vars.len(), expected, "{case}: trainable tensor count");
        for (key, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{case}: no gradient for {key}"));
            // Every trainable parameter gets a finite, non-zero gradient.
            let g_abs = g.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                g_abs.is_finite() && g_abs > 0.0,
                "{case}: {key} gradient sum |g| = {g_abs}"
            );
            let r = rel_diff(g, &reference[&format!("grad.{key}")]);
            assert!(r <= 1e-4, "{case}: gradient of {key} rel diff {r}");
        }
        check_gradient_flow(&grads, &vars)?;
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let r = rel_diff(gx, &reference["grad.x"]);
        assert!(r <= 1e-4, "{case}: input gradient rel diff {r}");
        // The frozen base stores no gradient at all.
        for (path, layer) in &model.layers {
            assert!(
                grads.get(layer.base().weight()?).is_none(),
                "{case}: {path}.weight has a gradient"
            );
            if let Some(b) = layer.base().bias() {
                assert!(grads.get(b).is_none(), "{case}: {path}.bias has a gradient");
            }
        }
    }
    Ok(())
}

#[test]
fn merged_weights_match_peft_merge() -> TestResult {
    for case in CASES {
        let dev = Device::Cpu;
        let reference = candle_core::safetensors::load(
            fixtures().join(case).join("reference.safetensors"),
            &dev,
        )?;
        let adapter = PeftAdapter::load(&fixtures().join(case), &dev)?;
        let model = ToyModel::from_adapter(case, &adapter, &dev)?;
        assert!(adapter
            .modules_missing_from(ToyModel::module_paths(case))
            .is_empty());
        assert_eq!(
            adapter.modules_missing_from(["other.proj"]).len(),
            model.layers.len()
        );
        let mut merged_layers = Vec::new();
        for (path, layer) in &model.layers {
            let w = layer.merged_weight_f32()?;
            let r = rel_diff(&w, &reference[&format!("merged.{path}.weight")]);
            assert!(r <= 1e-5, "{case}: merged {path}.weight rel diff {r}");
            let merged = FrozenLinear::new(w, layer.base().bias().cloned())?;
            merged_layers.push((path.clone(), AdaptedLinear::Frozen(merged)));
        }
        let merged = ToyModel {
            case,
            layers: merged_layers,
        };
        let out = merged.forward(&reference["x"])?;
        let r = rel_diff(&out, &reference["out_merged"]);
        assert!(r <= 1e-5, "{case}: merged-model output rel diff {r}");
    }
    Ok(())
}

/// One AdamW step moves the adapter away from peft's fixture values; the saved adapter must read
/// back identically. With IDEFICS_TRAIN_EXPORT=<dir> the adapters and outputs are also written
/// there for `make_train_fixtures.py --verify-rust <dir>` (peft reads our files).
#[test]
fn saved_adapter_reads_back() -> TestResult {
    let export = std::env::var_os("IDEFICS_TRAIN_EXPORT").map(PathBuf::from);
    let tmp = tempfile::tempdir()?;
    for case in CASES {
        let (model, reference, _x, grads) = run_case(case)?;
        let mut opt = AdamW::new(model.named_vars(), AdamWConfig::default())?;
        opt.step(&grads, 1e-2)?;
        let layers = model.layers.iter().map(|(p, l)| (p.as_str(), l));
        let adapter = PeftAdapter::from_layers(
            PeftAdapter::load(&fixtures().join(case), &Device::Cpu)?.config,
            layers,
        )?;
        let dir = tmp.path().join(case);
        adapter.save(&dir)?;
        let back = PeftAdapter::load(&dir, &Device::Cpu)?;
        assert_eq!(back.config, adapter.config);
        let ours: HashMap<String, Tensor> = adapter.named_tensors().into_iter().collect();
        let theirs: HashMap<String, Tensor> = back.named_tensors().into_iter().collect();
        assert_eq!(ours.len(), theirs.len());
        for (k, t) in &ours {
            assert_eq!(
                rel_diff(t, &theirs[k]),
                0.0,
                "{case}: {k} changed on save/load"
            );
        }
        let reloaded = ToyModel::from_adapter(case, &back, &Device::Cpu)?;
        let out = reloaded.forward(&reference["x"])?;
        let out_trained = model.forward(&reference["x"])?;
        assert_eq!(rel_diff(&out, &out_trained), 0.0);
        assert!(
            rel_diff(&out, &reference["out"]) > 1e-4,
            "{case}: the step changed nothing"
        );
        if let Some(root) = &export {
            let d = root.join(case);
            adapter.save(&d)?;
            let outs = HashMap::from([
                ("x".to_string(), reference["x"].clone()),
                ("out".to_string(), out),
            ]);
            candle_core::safetensors::save(&outs, d.join("rust_out.safetensors"))?;
        }
    }
    Ok(())
}

#[test]
fn fresh_config_has_peft_fields_and_matching_rules() -> TestResult {
    let settings = LoraSettings {
        r: 8,
        alpha: 16.0,
        use_rslora: false,
        use_dora: true,
        dropout: 0.05,
    };
    let mut cfg = PeftLoraConfig::new(
        &settings,
        ModuleSelector::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    let json = serde_json::to_value(&cfg)?;
    let peft_written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("linear_dora/adapter_config.json"),
    )?)?;
    // Same field set as peft 0.21.2's own file.
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&json), keys(&peft_written));
    assert!(cfg.targets("model.layers.0.self_attn.q_proj")?);
    assert!(!cfg.targets("model.layers.0.self_attn.k_proj")?);
    assert!(!cfg.targets("model.layers.0.self_attn.xq_proj")?);
    cfg.exclude_modules = Some(ModuleSelector::Names(vec![
        "vision_model.encoder.layers.0.self_attn.q_proj".into(),
    ]));
    assert!(!cfg.targets("vision_model.encoder.layers.0.self_attn.q_proj")?);
    // The Idefics2 fine-tuning notebook's regex form.
    cfg.target_modules = Some(ModuleSelector::Regex(
        r".*(text_model|modality_projection|perceiver_resampler).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$".into(),
    ));
    assert!(cfg.targets("model.text_model.layers.3.mlp.down_proj")?);
    assert!(!cfg.targets("model.vision_model.encoder.layers.3.mlp.fc1")?);
    cfg.rank_pattern.insert("mlp.down_proj".into(), 4);
    cfg.alpha_pattern.insert(r"layers\.3\..*".into(), 2.0);
    let s = cfg.settings_for("model.text_model.layers.3.mlp.down_proj")?;
    assert_eq!((s.r, s.alpha), (4, 2.0));
    let s = cfg.settings_for("model.text_model.layers.1.mlp.up_proj")?;
    assert_eq!((s.r, s.alpha), (8, 16.0));
    cfg.target_modules = Some(ModuleSelector::Regex("all-linear".into()));
    assert!(
        cfg.targets("model.vision_model.encoder.layers.3.mlp.fc1")? && !cfg.targets("lm_head")?
    );
    cfg.peft_type = "IA3".into();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("peft_type"));
    Ok(())
}

#[test]
fn inconsistent_adapter_files_are_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = fixtures().join("linear_dora");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f))?;
    }
    // DoRA weights under a config that says plain LoRA.
    let cfg_path = tmp.path().join("adapter_config.json");
    let text =
        std::fs::read_to_string(&cfg_path)?.replace("\"use_dora\": true", "\"use_dora\": false");
    std::fs::write(&cfg_path, text)?;
    let err = PeftAdapter::load(tmp.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_magnitude_vector"), "{err}");
    // A rank that disagrees with the tensors.
    let text =
        std::fs::read_to_string(src.join("adapter_config.json"))?.replace("\"r\": 4", "\"r\": 5");
    std::fs::write(&cfg_path, text)?;
    let err = PeftAdapter::load(tmp.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("r = 5"), "{err}");
    // No weights file.
    std::fs::remove_file(tmp.path().join("adapter_model.safetensors"))?;
    let err = PeftAdapter::load(tmp.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
    Ok(())
}

#[test]
fn gradient_flow_check_names_cut_parameters() -> TestResult {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, (2, 3), &dev)?;
    let cut = Var::randn(0f32, 1.0, (2, 3), &dev)?;
    let zero = Var::zeros((2, 3), DType::F32, &dev)?;
    // `cut` goes through a fused softmax with no backward; `zero` multiplies a zero.
    let fused = candle_nn::ops::softmax_last_dim(cut.as_tensor())?;
    let loss = ((x.as_tensor() * 2.0)? + fused)?.sum_all()?
        + (zero.as_tensor() * &Tensor::zeros((2, 3), DType::F32, &dev)?)?.sum_all()?;
    let grads = loss?.backward()?;
    let vars = vec![
        ("x".to_string(), x),
        ("cut".to_string(), cut),
        ("zero".to_string(), zero),
    ];
    let err = check_gradient_flow(&grads, &vars).unwrap_err().to_string();
    assert!(
        err.contains("cut: no gradient") && err.contains("zero: all-zero gradient"),
        "{err}"
    );
    assert!(!err.contains("x:"), "{err}");
    Ok(())
}

#[test]
fn frozen_linear_stores_no_weight_gradient() -> TestResult {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (6, 8), &dev)?;
    let x = Var::randn(0f32, 1.0, (3, 5, 8), &dev)?;
    // Plain matmul: the GradStore holds a weight-sized gradient for the frozen W^T.
    let plain = x.as_tensor().broadcast_matmul(&w.t()?)?;
    let plain_grads = plain.sqr()?.sum_all()?.backward()?;
    let plain_entries = plain_grads.get_ids().count();
    let frozen = FrozenLinear::new(w.clone(), None)?.forward(x.as_tensor())?;
    let grads = frozen.sqr()?.sum_all()?.backward()?;
    assert!(grads.get(&w).is_none());
    assert!(
        grads.get_ids().count() < plain_entries,
        "{} vs {plain_entries}",
        grads.get_ids().count()
    );
    let r = rel_diff(
        grads.get(x.as_tensor()).expect("dx"),
        plain_grads.get(x.as_tensor()).expect("dx"),
    );
    assert!(r <= 1e-5, "input gradient rel diff {r}");
    Ok(())
}
