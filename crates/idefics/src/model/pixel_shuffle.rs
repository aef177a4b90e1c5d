//! Idefics3 / SmolVLM connector: pixel shuffle (space to depth) then one bias-free linear projection
//! (`Idefics3Connector`, `SmolVLMConnector` in transformers).

use crate::nn::{join_path, Linear, ParamVisitor, VisitParams};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `x [n, S, D]` -> `[n, S / r^2, D * r^2]` with transformers' exact order (`Idefics3Connector.pixel_shuffle`):
/// the sequence is read as a `G x G` grid, `G = floor(sqrt(S))` (transformers assumes a square grid); output token
/// `i * (G / r) + j` is block `(i, j)` and its feature `(a * r + b) * D + d` is feature `d` of patch
/// `(i * r + a, j * r + b)`.
pub fn pixel_shuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (n, s, d) = x.dims3()?;
    let g = (s as f64).sqrt() as usize;
    if g * g != s || r == 0 || !g.is_multiple_of(r) {
        candle_core::bail!(
            "pixel shuffle: {s} patches do not form a square grid whose side is a multiple of the scale \
             factor {r} (transformers requires both)"
        );
    }
    // The same views and permutes as transformers, so the channel order is the same by construction.
    x.reshape((n, g, g / r, d * r))?
        .permute((0, 2, 1, 3))?
        .reshape((n, g / r, g / r, d * r * r))?
        .permute((0, 2, 1, 3))?
        .reshape((n, s / (r * r), d * r * r))
}

/// Pixel shuffle + `modality_projection.proj` (`[Dt, Dv * r^2]`, no bias).
#[derive(Debug, Clone)]
pub struct PixelShuffleConnector {
    proj: Linear,
    scale_factor: usize,
}

impl PixelShuffleConnector {
    /// `vb` at `model.connector`.
    pub fn load(
        vb: VarBuilder,
        vision_hidden: usize,
        text_hidden: usize,
        scale_factor: usize,
    ) -> Result<Self> {
        let in_dim = vision_hidden * scale_factor * scale_factor;
        Ok(Self {
            proj: Linear::load(
                vb.pp("modality_projection").pp("proj"),
                in_dim,
                text_hidden,
                false,
            )?,
            scale_factor,
        })
    }

    pub fn scale_factor(&self) -> usize {
        self.scale_factor
    }

    /// `vision [n, S, Dv]` (every patch of the grid) -> `[n, S / r^2, Dt]`.
    pub fn forward(&self, vision: &Tensor) -> Result<Tensor> {
        self.proj
            .forward(&pixel_shuffle(vision, self.scale_factor)?)
    }
}

impl VisitParams for PixelShuffleConnector {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        v.linear(
            &join_path(prefix, "modality_projection.proj"),
            &mut self.proj,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn channel_order_matches_the_documented_formula() {
        let (n, g, d, r) = (2usize, 6usize, 3usize, 3usize);
        let s = g * g;
        let data: Vec<f32> = (0..n * s * d).map(|i| i as f32).collect();
        let x = Tensor::from_vec(data.clone(), (n, s, d), &Device::Cpu).unwrap();
        let y: Vec<Vec<Vec<f32>>> = pixel_shuffle(&x, r).unwrap().to_vec3().unwrap();
        assert_eq!(
            (y.len(), y[0].len(), y[0][0].len()),
            (n, s / (r * r), d * r * r)
        );
        for (k, img) in y.iter().enumerate() {
            for i in 0..g / r {
                for j in 0..g / r {
                    for a in 0..r {
                        for b in 0..r {
                            for c in 0..d {
                                let patch = (i * r + a) * g + (j * r + b);
                                let want = data[(k * s + patch) * d + c];
                                assert_eq!(img[i * (g / r) + j][(a * r + b) * d + c], want);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_grids_transformers_cannot_shuffle() {
        let x = Tensor::zeros((1, 12, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(pixel_shuffle(&x, 2).is_err());
        let x = Tensor::zeros((1, 49, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(pixel_shuffle(&x, 2).is_err());
    }
}
