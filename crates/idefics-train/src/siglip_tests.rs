//! Tests of `siglip.rs`: the loss against torch, gradients reaching the tower, a short training run.

use super::*;
use crate::hf_checkpoint::load_tensors;
use crate::train_loop::{latest_checkpoint, BatchSource, Silent};
use serde_json::Value;
use std::path::Path;

fn fixture_dir(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

fn mat(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let (n, e) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (n, e), &Device::Cpu).unwrap()
}

/// Sum of the absolute values of a tensor's elements.
fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs torch {w}"
        );
    }
}

#[test]
fn sigmoid_loss_and_gradients_match_torch() {
    let text = std::fs::read_to_string(fixture_dir("siglip/sigmoid_loss.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let img = Var::from_tensor(&mat(&case["img_emb"])).unwrap();
        let txt = Var::from_tensor(&mat(&case["txt_emb"])).unwrap();
        let tp = Var::new(case["t_prime"].as_f64().unwrap() as f32, &Device::Cpu).unwrap();
        let b = Var::new(case["bias"].as_f64().unwrap() as f32, &Device::Cpu).unwrap();
        let loss = sigmoid_loss(
            img.as_tensor(),
            txt.as_tensor(),
            tp.as_tensor(),
            b.as_tensor(),
        )
        .unwrap();
        let want = case["loss"].as_f64().unwrap() as f32;
        assert_close(&[loss.to_scalar::<f32>().unwrap()], &[want], 1e-5, "loss");
        let g = loss.backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let flat_v = |v: &Value| flat(&mat(v));
        assert_close(
            &flat(g.get(img.as_tensor()).unwrap()),
            &flat_v(&case["grad_img"]),
            1e-4,
            "grad img",
        );
        assert_close(
            &flat(g.get(txt.as_tensor()).unwrap()),
            &flat_v(&case["grad_txt"]),
            1e-4,
            "grad txt",
        );
        let scalar = |v: &Var| g.get(v.as_tensor()).unwrap().to_scalar::<f32>().unwrap();
        assert_close(
            &[scalar(&tp)],
            &[case["grad_t_prime"].as_f64().unwrap() as f32],
            1e-4,
            "grad t'",
        );
        assert_close(
            &[scalar(&b)],
            &[case["grad_bias"].as_f64().unwrap() as f32],
            1e-4,
            "grad b",
        );
    }
}

#[test]
fn loss_refuses_mismatched_batches() {
    let a = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let s = Tensor::new(0f32, &Device::Cpu).unwrap();
    assert!(sigmoid_loss(&a, &b, &s, &s).is_err());
    let square = Tensor::eye(2, DType::F32, &Device::Cpu).unwrap();
    assert!(sigmoid_loss_with_positives(&a, &a, &s, &s, &square).is_err());
}

#[test]
fn identical_captions_are_positives_of_each_other() {
    let dev = Device::Cpu;
    let ids = vec![vec![5u32, 6], vec![7], vec![5, 6], vec![5]];
    let pos = identical_caption_positives(&ids, &dev).unwrap();
    let want = [
        [1f32, 0., 1., 0.],
        [0., 1., 0., 0.],
        [1., 0., 1., 0.],
        [0., 0., 0., 1.],
    ];
    assert_eq!(pos.to_vec2::<f32>().unwrap(), want);

    // The loss by hand: -sum_ij log sigmoid(label_ij * (t * cos_ij + b)) / n.
    let img = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.], [-1., 0.5]], &dev).unwrap();
    let txt = Tensor::new(&[[1f32, 0.2], [0.3, 1.], [1., 0.], [-1., 0.]], &dev).unwrap();
    let (tp, b) = (0.7f64, -1.5f64);
    let t = Tensor::new(tp as f32, &dev).unwrap();
    let bt = Tensor::new(b as f32, &dev).unwrap();
    let got = sigmoid_loss_with_positives(&img, &txt, &t, &bt, &pos)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let rows = |x: &Tensor| x.to_vec2::<f32>().unwrap();
    let (iv, tv) = (rows(&img), rows(&txt));
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| (x / n) as f64).collect::<Vec<_>>()
    };
    let mut want_loss = 0f64;
    for i in 0..4 {
        for j in 0..4 {
            let (a, c) = (unit(&iv[i]), unit(&tv[j]));
            let cos: f64 = a.iter().zip(&c).map(|(x, y)| x * y).sum();
            let label = if want[i][j] > 0.0 { 1.0 } else { -1.0 };
            let z = label * (tp.exp() * cos + b);
            want_loss -= -(1.0 + (-z).exp()).ln();
        }
    }
    want_loss /= 4.0;
    assert!(
        (got as f64 - want_loss).abs() < 1e-5,
        "{got} vs {want_loss}"
    );
    // With the diagonal only the value differs: the repeats really are counted as positives.
    let diag = sigmoid_loss(&img, &txt, &t, &bt)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((diag - got).abs() > 1e-3);
}

/// Pairs whose captions name the image's colour and which half holds a bar.
fn colour_pairs() -> Vec<PairSample> {
    let colours = [
        ("red", [220u8, 30, 30]),
        ("green", [30, 200, 40]),
        ("blue", [30, 40, 220]),
        ("yellow", [230, 220, 40]),
    ];
    let mut out = Vec::new();
    for (name, rgb) in colours {
        for (side, w, h) in [("left", 40usize, 24usize), ("right", 24, 40)] {
            let mut data = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for x in 0..w {
                    let on = if side == "left" { x < w / 2 } else { y < h / 2 };
                    data.extend(if on { rgb } else { [250, 250, 250] });
                }
            }
            out.push(PairSample {
                image: RgbImage::new(w, h, data).unwrap(),
                text: format!("a {name} bar on the {side}"),
            });
        }
    }
    out
}

/// Options for the tiny fixture tower: 16-wide embeddings, 32 px, batch 8, lr 3e-3 without warm-up.
fn tiny_opts() -> SiglipOptions {
    SiglipOptions {
        embed_dim: 16,
        longest_edges: vec![32],
        batch_size: 8,
        lr: 3e-3,
        warmup_steps: 0,
        ..Default::default()
    }
}

fn fixture_trainer(opts: SiglipOptions) -> Result<SiglipTrainer, TrainError> {
    SiglipTrainer::from_checkpoint(&fixture_dir("e2e/tiny-chat"), opts, &Device::Cpu)
}

fn tiny_trainer(steps: u64) -> SiglipTrainer {
    fixture_trainer(SiglipOptions {
        steps,
        ..tiny_opts()
    })
    .unwrap()
}

#[test]
fn tower_gradients_are_finite_and_non_zero() {
    let tr = tiny_trainer(1);
    let (images, ids) = tr.prepare(&colour_pairs()).unwrap();
    // Native resolution: both aspect ratios kept (32x20 and 20x32 rounded to patch 4).
    assert_eq!(images[0].dims(), &[3, 20, 32]);
    assert_eq!(images[1].dims(), &[3, 32, 20]);
    let loss = tr.model().loss(&images, &ids).unwrap();
    let grads = loss.backward().unwrap();
    let mut nonzero = 0;
    for (name, var) in tr.model().vision_vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let s = abs_sum(g);
        assert!(s.is_finite(), "{name}: non-finite gradient");
        if s > 0.0 {
            nonzero += 1;
        }
    }
    // Every tower tensor except the unused position-embedding rows is touched; all get some gradient.
    assert_eq!(nonzero, tr.model().vision_vars().len());
}

#[test]
fn a_few_steps_lower_the_loss_and_the_tower_is_written_back() {
    let pairs = colour_pairs();
    let mut tr = tiny_trainer(25);
    let before = tr.eval_loss(&pairs).unwrap();
    let mut data = pairs.clone().into_iter().cycle().map(Ok);
    let mut last = None;
    tr.train(&mut data, |s| last = Some(*s)).unwrap();
    let after = tr.eval_loss(&pairs).unwrap();
    assert_eq!(last.map(|s| s.step), Some(25));
    assert!(after < 0.7 * before, "loss {before} -> {after}");

    let dir = tempfile::tempdir().unwrap();
    let src = fixture_dir("e2e/tiny-chat");
    tr.save_into(&src, dir.path()).unwrap();
    let old = load_tensors(&src, DType::F32, &Device::Cpu).unwrap();
    let new = load_tensors(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(old.len(), new.len());
    let differs = |name: &str| {
        let a = old[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = new[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a != b
    };
    assert!(differs(
        "model.vision_model.encoder.layers.0.self_attn.q_proj.weight"
    ));
    assert!(
        !differs("model.text_model.embed_tokens.weight"),
        "text side not written back"
    );
    assert!(!differs("model.connector.perceiver_resampler.latents"));
    // The result loads as a model.
    idefics::Idefics2ForConditionalGeneration::load(dir.path(), &Default::default()).unwrap();
    assert!(dir.path().join("tokenizer.json").is_file());
}

#[test]
fn the_scalar_learning_rate_scale_moves_temperature_and_bias_further() {
    let pairs = colour_pairs();
    let moved = |scale: f64| {
        let opts = SiglipOptions {
            embed_dim: 16,
            longest_edges: vec![32],
            batch_size: 8,
            steps: 3,
            lr: 1e-3,
            scalar_lr_scale: scale,
            warmup_steps: 0,
            ..Default::default()
        };
        let mut tr =
            SiglipTrainer::from_checkpoint(&fixture_dir("e2e/tiny-chat"), opts, &Device::Cpu)
                .unwrap();
        let mut data = pairs.clone().into_iter().cycle().map(Ok);
        tr.train(&mut data, |_| {}).unwrap();
        let (t, b) = tr.model().temperature_and_bias().unwrap();
        ((t.ln() - INIT_T_PRIME).abs(), (b - INIT_BIAS).abs())
    };
    let (dt0, db0) = moved(0.0);
    assert!(
        dt0 < 1e-6 && db0 < 1e-6,
        "scale 0 must freeze them: {dt0} {db0}"
    );
    let (dt1, db1) = moved(1.0);
    let (dt10, db10) = moved(10.0);
    assert!(dt1 > 0.0 && db1 > 0.0);
    // Adam's step is about the learning rate, so ten times the rate moves them several times further.
    assert!(
        dt10 > 5.0 * dt1 && db10 > 5.0 * db1,
        "{dt1} {db1} / {dt10} {db10}"
    );
}

#[test]
fn several_resolutions_train_more_rows_of_the_position_table() {
    let name = "model.vision_model.embeddings.position_embedding.weight";
    let changed_rows = |edges: Vec<usize>| {
        let opts = SiglipOptions {
            embed_dim: 16,
            longest_edges: edges,
            batch_size: 8,
            steps: 2,
            lr: 1e-2,
            warmup_steps: 0,
            ..Default::default()
        };
        let mut tr =
            SiglipTrainer::from_checkpoint(&fixture_dir("e2e/tiny-chat"), opts, &Device::Cpu)
                .unwrap();
        let before = tr.model().vision_vars()[name].as_tensor().copy().unwrap();
        let mut data = colour_pairs().into_iter().cycle().map(Ok);
        tr.train(&mut data, |_| {}).unwrap();
        let after = tr.model().vision_vars()[name].as_tensor();
        let diff = (after - &before).unwrap().abs().unwrap().sum(1).unwrap();
        let diff = diff.to_vec1::<f32>().unwrap();
        // Weight decay alone moves an unvisited row by ~1e-7; an Adam step moves a visited one by ~lr.
        diff.iter().filter(|&&d| d > 1e-3).count()
    };
    let tr = tiny_trainer(1);
    assert_eq!(tr.longest_edge_at(0), 32);
    // Patch 4, a 16 x 16 table: at longest side 32 the 40x24 and 24x40 images are 8 x 5 and 5 x 8 patches,
    // which visit 71 buckets (two 8 x 5 grids with 9 in common).
    let low = changed_rows(vec![32]);
    let both = changed_rows(vec![32, 64]);
    assert_eq!(low, 71);
    assert!(both > low + 32, "{low} rows at 32 px, {both} at 32 + 64 px");
}

#[test]
fn resolutions_are_validated_and_taken_in_turn() {
    let build = |edges: Vec<usize>| {
        let opts = SiglipOptions {
            embed_dim: 16,
            longest_edges: edges,
            batch_size: 8,
            ..Default::default()
        };
        SiglipTrainer::from_checkpoint(&fixture_dir("e2e/tiny-chat"), opts, &Device::Cpu)
    };
    assert!(build(vec![]).is_err());
    assert!(build(vec![32, 2]).is_err()); // below the patch size
    let tr = build(vec![32, 48, 64]).unwrap();
    let seq: Vec<usize> = (0..5).map(|k| tr.longest_edge_at(k)).collect();
    assert_eq!(seq, [32, 48, 64, 32, 48]);
}

/// `colour_pairs` plus square images: three size groups.
fn three_size_pairs() -> Vec<PairSample> {
    let mut pairs = colour_pairs();
    for (i, grey) in [40u8, 120, 200].into_iter().enumerate() {
        pairs.push(PairSample {
            image: RgbImage::new(30, 30, vec![grey; 30 * 30 * 3]).unwrap(),
            text: format!("a grey square number {i}"),
        });
    }
    pairs
}

#[test]
fn size_groups_are_dealt_largest_first_to_the_least_loaded_worker() {
    use super::parallel::deal_groups;
    // 5 -> w0, 4 -> w1, 2 -> w1 (4 < 5), 1 -> w0 (5 < 6); each share in group order.
    assert_eq!(deal_groups(&[5, 1, 4, 2], 2), vec![vec![0, 1], vec![2, 3]]);
    // More workers than groups: the idle ones are dropped.
    assert_eq!(deal_groups(&[3, 7], 4), vec![vec![1], vec![0]]);
    assert_eq!(deal_groups(&[3, 7], 1), vec![vec![0, 1]]);
}

#[test]
fn parallel_image_groups_give_the_same_loss_and_gradients() {
    let tr = tiny_trainer(1);
    let (images, ids) = tr.prepare(&three_size_pairs()).unwrap();
    let loss = tr.model().loss(&images, &ids).unwrap();
    let want_loss = loss.to_scalar::<f32>().unwrap() as f64;
    let want = loss.backward().unwrap();
    let mut vars: Vec<Var> = tr
        .model()
        .main_params()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    vars.extend(tr.model().scalar_params().into_iter().map(|(_, v)| v));
    for workers in [2, 3, 8] {
        let (got_loss, got) = tr
            .model()
            .loss_and_grads_parallel(&images, &ids, workers, vars.clone())
            .unwrap();
        let got = got.expect("finite loss");
        // Same pooled rows through the same head: the loss is bit-identical.
        assert_eq!(got_loss, want_loss, "{workers} workers");
        for (name, var) in tr
            .model()
            .main_params()
            .into_iter()
            .chain(tr.model().scalar_params())
        {
            let flat = |g: Option<&Tensor>| {
                g.unwrap_or_else(|| panic!("{workers} workers: no gradient for {name}"))
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let (a, b) = (
                flat(got.get(var.as_tensor())),
                flat(want.get(var.as_tensor())),
            );
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-5 * scale,
                "{workers} workers, {name}: max diff {worst} vs max |grad| {scale}"
            );
        }
    }
}

#[test]
fn parallel_steps_train_like_sequential_ones_and_are_validated() {
    let run = |parallel_images: usize| {
        let mut tr = fixture_trainer(SiglipOptions {
            batch_size: 11,
            steps: 4,
            parallel_images,
            ..tiny_opts()
        })?;
        let mut data = three_size_pairs().into_iter().cycle().map(Ok);
        let mut losses = Vec::new();
        tr.train(&mut data, |s| losses.push(s.loss))?;
        Ok::<_, TrainError>(losses)
    };
    let seq = run(1).unwrap();
    let par = run(2).unwrap();
    assert_eq!(seq.len(), 4);
    assert_eq!(seq[0], par[0]);
    for (a, b) in seq.iter().zip(&par) {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "losses {seq:?} vs {par:?}");
    }
    assert!(seq[3] < seq[0], "the loss went down: {seq:?}");
    let err = run(0).unwrap_err().to_string();
    assert!(err.contains("parallel_images"), "{err}");
}

/// The fixture tower's pooled vectors `[2, width]` of two 32 x 32 images under `pool`, after checking that
/// the SigLIP loss on them is finite and its gradient reaches the tower through that pooling.
fn pooled_pair_that_trains(pool: PatchPool, a: &RgbImage, b: &RgbImage) -> Tensor {
    let tr = fixture_trainer(SiglipOptions {
        pool,
        ..tiny_opts()
    })
    .unwrap();
    let images = [
        tr.model().image_tensor(a, 32).unwrap(),
        tr.model().image_tensor(b, 32).unwrap(),
    ];
    let ids = tr.tokenize(&["a white image", "a red dot"]).unwrap();
    let loss = tr.model().loss(&images, &ids).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let grads = loss.backward().unwrap();
    let name = "model.vision_model.embeddings.patch_embedding.weight";
    assert!(grads
        .get(tr.model().vision_vars()[name].as_tensor())
        .is_some());
    tr.model().pool_images(&images).unwrap()
}

#[test]
fn max_pooling_keeps_what_a_few_patches_show() {
    // Two images that differ in one small corner only: their max-pooled vectors differ by far more than
    // their mean-pooled ones.
    let plain = RgbImage::new(32, 32, vec![250; 32 * 32 * 3]).unwrap();
    let mut data = vec![250u8; 32 * 32 * 3];
    for y in 0..4 {
        for x in 0..4 {
            data[(y * 32 + x) * 3..(y * 32 + x) * 3 + 3].copy_from_slice(&[200, 20, 20]);
        }
    }
    let dot = RgbImage::new(32, 32, data).unwrap();
    let pooled = |pool: PatchPool| {
        let p = pooled_pair_that_trains(pool, &plain, &dot);
        abs_sum(&(p.get(0).unwrap() - p.get(1).unwrap()).unwrap())
    };
    let mean = pooled(PatchPool::Mean);
    let max = pooled(PatchPool::Max);
    assert!(
        max > 2.0 * mean,
        "max-pooled difference {max}, mean-pooled {mean}"
    );
}

#[test]
fn mean_max_pooling_puts_both_poolings_side_by_side_and_trains() {
    let image = |seed: u8| {
        let data: Vec<u8> = (0..32 * 32 * 3)
            .map(|i| ((i * 37 + seed as usize * 11) % 251) as u8)
            .collect();
        RgbImage::new(32, 32, data).unwrap()
    };
    let (a, b) = (image(1), image(2));
    let pooled = |pool: PatchPool| pooled_pair_that_trains(pool, &a, &b);
    let mean = pooled(PatchPool::Mean);
    let max = pooled(PatchPool::Max);
    let both = pooled(PatchPool::MeanMax);
    let d = mean.dim(1).unwrap();
    assert_eq!(both.dims(), &[2, 2 * d]);
    assert_eq!(PatchPool::MeanMax.width(d), 2 * d);
    let gap = |a: &Tensor, b: &Tensor| abs_sum(&(a - b).unwrap());
    assert!(gap(&both.narrow(1, 0, d).unwrap(), &mean) < 1e-4);
    assert!(gap(&both.narrow(1, d, d).unwrap(), &max) < 1e-4);
    assert!(gap(&mean, &max) > 1e-2, "the two poolings differ");
}

/// A pair source that fails after `batches_left` batches: a run killed mid-way.
struct KilledAfter<S> {
    inner: S,
    batches_left: usize,
}

impl<S: BatchSource<Vec<PairSample>>> BatchSource<Vec<PairSample>> for KilledAfter<S> {
    fn next_batch(&mut self, batch_size: usize) -> Result<Vec<PairSample>, TrainError> {
        if self.batches_left == 0 {
            return Err(TrainError::Invalid("killed".into()));
        }
        self.batches_left -= 1;
        self.inner.next_batch(batch_size)
    }

    fn state(&self) -> Value {
        self.inner.state()
    }

    fn restore(&mut self, state: &Value) -> Result<(), TrainError> {
        self.inner.restore(state)
    }
}

/// A SigLIP run killed after its step-2 checkpoint (and one more logged step) and resumed from it ends as an
/// uninterrupted run: the same step metrics, metrics.jsonl and trained tensors, bit for bit. Batches of 5 from
/// 8 pairs and two image sizes in turn, so a wrong data position or step count would show.
#[test]
fn an_interrupted_siglip_run_resumes_exactly() {
    let opts = SiglipOptions {
        steps: 4,
        save_every: Some(2),
        batch_size: 5,
        longest_edges: vec![32, 24],
        ..tiny_opts()
    };
    let pairs = colour_pairs();
    let source = || PairBatches::new(pairs.clone().into_iter().cycle(), Ok::<_, TrainError>);

    let full_dir = tempfile::tempdir().unwrap();
    let mut full = fixture_trainer(opts.clone()).unwrap();
    full.set_run_dir(full_dir.path());
    let full_steps = full.run(&mut source(), &mut Silent).unwrap();
    assert_eq!(full_steps.len(), 4);

    let cut_dir = tempfile::tempdir().unwrap();
    let mut cut = fixture_trainer(opts.clone()).unwrap();
    cut.set_run_dir(cut_dir.path());
    let mut killed = KilledAfter {
        inner: source(),
        batches_left: 3,
    };
    let err = cut.run(&mut killed, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("killed"), "{err}");
    let ck = latest_checkpoint(cut_dir.path()).unwrap().unwrap();
    assert!(
        ck.ends_with("checkpoints/step-00000002"),
        "{}",
        ck.display()
    );

    let mut resumed = fixture_trainer(opts).unwrap();
    resumed.set_run_dir(cut_dir.path());
    let mut data = source();
    resumed.restore(&ck, &mut data).unwrap();
    assert_eq!(resumed.step_count(), 2);
    let rest = resumed.run(&mut data, &mut Silent).unwrap();
    assert_eq!(rest.len(), 2);
    for (a, b) in full_steps[2..].iter().zip(&rest) {
        assert_eq!(
            (a.step, a.loss, a.lr, a.grad_norm),
            (b.step, b.loss, b.lr, b.grad_norm)
        );
        assert_eq!(a.extra["temperature"], b.extra["temperature"]);
        assert_eq!(a.extra["bias"], b.extra["bias"]);
    }

    let logged = |dir: &Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
            })
            .collect()
    };
    let full_log = logged(full_dir.path());
    assert_eq!(full_log.len(), 4);
    assert_eq!(full_log, logged(cut_dir.path()));

    let trained = |tr: &SiglipTrainer| -> Vec<(String, Vec<f32>)> {
        tr.model()
            .main_params()
            .into_iter()
            .chain(tr.model().scalar_params())
            .map(|(name, var)| {
                let v = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                (name, v)
            })
            .collect()
    };
    let (a, b) = (trained(&full), trained(&resumed));
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        assert!(x == y, "{name} differs after the resume");
    }
}
