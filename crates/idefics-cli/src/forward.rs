//! `idefics forward`: logits for saved inputs, or for a raw prompt with images, to compare with transformers.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use idefics::pipeline::{Pipeline, Prompt, PromptInput};
use idefics::weights::parse_dtype;
use idefics::{LoadOptions, ModelInputs, PositionIdRule, VlmModel};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors file with input_ids, attention_mask, pixel_values, pixel_attention_mask.
    #[arg(long, required_unless_present = "prompt", conflicts_with = "prompt")]
    pub inputs: Option<PathBuf>,
    /// A raw prompt with `<image>` placeholders, as `processor(text=..., images=...)` takes it; the processed
    /// input_ids, attention_mask, pixel_values and pixel_attention_mask are written next to the logits.
    #[arg(long)]
    pub prompt: Option<String>,
    /// An image for the prompt's `<image>` slots, in order (repeatable; with --prompt).
    #[arg(long = "image", requires = "prompt")]
    pub images: Vec<PathBuf>,
    /// Split images into 4 crops + the whole image (default: the checkpoint's setting).
    #[arg(long, conflicts_with = "no_split")]
    pub split: bool,
    /// Do not split images.
    #[arg(long)]
    pub no_split: bool,
    /// Where to write the logits (safetensors, f32).
    #[arg(long)]
    pub out: PathBuf,
    /// Vision position-id rule to match: `hf5` (transformers 5.x) or `hf4.57` (transformers 4.55-4.57).
    #[arg(long, default_value = "hf5")]
    pub position_id_rule: String,
    /// Compute dtype: f32 (for parity), bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: `cpu` or `cuda:N` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub quant: crate::model_source::QuantArgs,
}

pub fn run(args: ForwardArgs) -> Result<()> {
    let Some(rule) = PositionIdRule::parse(&args.position_id_rule) else {
        bail!(
            "--position-id-rule {:?}: expected hf5 or hf4.57",
            args.position_id_rule
        )
    };
    let dtype = parse_dtype(&args.dtype)?;
    let device = crate::model_source::parse_device(&args.device).context("--device")?;
    let opts = LoadOptions {
        device: device.clone(),
        dtype,
        position_id_rule: rule,
        use_fused_kernels: true,
        quant: args.quant.config(),
        cpu_weight_layout: idefics::model::CpuWeightLayout::Panels,
    };
    let splitting = match (args.split, args.no_split) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let (model, inputs) = match (&args.prompt, &args.inputs) {
        (Some(prompt), _) => {
            let images = crate::ask::load_images(&args.images)?;
            let pipeline = Pipeline::load(&args.model, &opts)
                .with_context(|| format!("loading {}", args.model.display()))?;
            let prepared = pipeline.prepare(
                &[PromptInput {
                    prompt: Prompt::Raw(prompt.clone()),
                    images,
                }],
                splitting,
            )?;
            let inputs = prepared.inputs;
            let as_i64 =
                |t: &Option<Tensor>| t.as_ref().map(|t| t.to_dtype(DType::I64)).transpose();
            for (name, tensor) in [
                ("input_ids", as_i64(&inputs.input_ids)?),
                ("attention_mask", as_i64(&inputs.attention_mask)?),
                ("pixel_values", inputs.pixel_values.clone()),
                (
                    "pixel_attention_mask",
                    as_i64(&inputs.pixel_attention_mask)?,
                ),
            ] {
                if let Some(t) = tensor {
                    out.insert(name.to_string(), t);
                }
            }
            (pipeline.model, inputs)
        }
        (None, Some(path)) => {
            let model = VlmModel::load(&args.model, &opts)
                .with_context(|| format!("loading {}", args.model.display()))?;
            (model, read_inputs(path, &device)?)
        }
        (None, None) => bail!("give --inputs FILE or --prompt TEXT"),
    };
    let logits = model.forward(&inputs, None)?.to_dtype(DType::F32)?;
    out.insert("logits".to_string(), logits.clone());
    candle_core::safetensors::save(&out, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote logits {:?} to {}", logits.dims(), args.out.display());
    Ok(())
}

/// Model inputs saved with transformers' names and layouts.
fn read_inputs(path: &std::path::Path, device: &Device) -> Result<ModelInputs> {
    let tensors = candle_core::safetensors::load(path, device)
        .with_context(|| format!("reading {}", path.display()))?;
    let known = [
        "input_ids",
        "attention_mask",
        "position_ids",
        "pixel_values",
        "pixel_attention_mask",
    ];
    for name in tensors.keys() {
        if !known.contains(&name.as_str()) {
            tracing::warn!("ignoring unknown input tensor {name}");
        }
    }
    let get = |name: &str| tensors.get(name).cloned();
    let Some(input_ids) = get("input_ids") else {
        bail!("{}: no input_ids tensor", path.display())
    };
    Ok(ModelInputs {
        input_ids: Some(input_ids),
        attention_mask: get("attention_mask"),
        position_ids: get("position_ids"),
        pixel_values: get("pixel_values"),
        pixel_attention_mask: get("pixel_attention_mask"),
        inputs_embeds: None,
    })
}
