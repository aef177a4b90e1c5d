//! The parts of an Idefics model as the paper trains them (frozen, fully trained, LoRA / DoRA, re-created),
//! named by their checkpoint-name prefixes. One definition for training plans, initialisation, learning-rate
//! scales and anything else that treats the parts differently.

/// A part of the model, by checkpoint-name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// `model.vision_model.*`: the SigLIP tower.
    Vision,
    /// `model.connector.modality_projection.*`: the MLP from vision to text width.
    Projection,
    /// `model.connector.perceiver_resampler.*`: the perceiver pooling.
    Perceiver,
    /// `model.text_model.*` except the token embeddings.
    Text,
    /// `model.text_model.embed_tokens.*`.
    Embeddings,
    /// `lm_head.*`.
    LmHead,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Self::Vision,
        Self::Projection,
        Self::Perceiver,
        Self::Text,
        Self::Embeddings,
        Self::LmHead,
    ];

    /// The module path under which the component's tensors are stored.
    pub fn module_path(self) -> &'static str {
        match self {
            Self::Vision => "model.vision_model",
            Self::Projection => "model.connector.modality_projection",
            Self::Perceiver => "model.connector.perceiver_resampler",
            Self::Text => "model.text_model",
            Self::Embeddings => "model.text_model.embed_tokens",
            Self::LmHead => "lm_head",
        }
    }

    /// The component a checkpoint name or module path belongs to.
    pub fn of(path: &str) -> Option<Component> {
        let under = |c: Component| {
            let p = c.module_path();
            path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        // Embeddings before Text: their path is inside the text model's.
        [
            Self::Embeddings,
            Self::Vision,
            Self::Projection,
            Self::Perceiver,
            Self::Text,
            Self::LmHead,
        ]
        .into_iter()
        .find(|&c| under(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_components_at_dot_boundaries() {
        let cases = [
            (
                "model.vision_model.encoder.layers.0.mlp.fc1.weight",
                Some(Component::Vision),
            ),
            (
                "model.connector.modality_projection.down_proj.weight",
                Some(Component::Projection),
            ),
            (
                "model.connector.perceiver_resampler.norm.weight",
                Some(Component::Perceiver),
            ),
            (
                "model.text_model.layers.1.self_attn.q_proj",
                Some(Component::Text),
            ),
            (
                "model.text_model.embed_tokens.weight",
                Some(Component::Embeddings),
            ),
            ("model.text_model.embed_tokens", Some(Component::Embeddings)),
            ("lm_head.weight", Some(Component::LmHead)),
            ("lm_head", Some(Component::LmHead)),
            ("lm_headx.weight", None),
            ("model.vision_modelx.weight", None),
            ("model.connector.other.weight", None),
        ];
        for (name, want) in cases {
            assert_eq!(Component::of(name), want, "{name}");
        }
        for c in Component::ALL {
            assert_eq!(Component::of(c.module_path()), Some(c));
        }
    }
}
