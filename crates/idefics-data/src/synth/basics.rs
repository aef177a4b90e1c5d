//! Single-object scenes: a canvas filled with one colour, or one large shape on a plain background.
//!
//! The easiest questions only the image can answer. A text prior cannot: every answer is uniform over the
//! colours or shapes. Mixed with the harder families from the start, a tiny model learns their answer
//! priors and never starts reading the image; learned alone first, these open the image path, and kept in
//! every batch afterwards they keep it open (measured in `recipes/tiny/README.md`).

use serde_json::json;

use super::canvas::Canvas;
use super::shapes::{draw, Object, SHAPES};
use super::task::{light_background, random_size, Example, Qa, COLOURS};
use crate::rng::Rng;

/// Generates one scene: half solid colours, half a single large shape.
pub fn generate(rng: &mut Rng) -> Example {
    let (w, h) = random_size(rng, 112, 448);
    let colour = rng.below(COLOURS.len());
    let colour_name = COLOURS[colour].0;
    if rng.chance(0.5) {
        let canvas = Canvas::new(w, h, COLOURS[colour].1);
        return Example {
            image: canvas.img,
            caption: format!("A plain {colour_name} image."),
            qas: vec![Qa::new(
                "image_colour",
                "What colour is the image?",
                colour_name,
                COLOURS.len(),
            )],
            record: json!({ "fill": colour_name }),
        };
    }
    let (wf, hf) = (w as f32, h as f32);
    let mut canvas = Canvas::new(w, h, light_background(rng));
    let shape = rng.below(SHAPES.len());
    // Large: the shape spans 50-70% of the short side, somewhere near the middle.
    let r = wf.min(hf) * (0.25 + 0.1 * rng.unit());
    let object = Object {
        colour,
        shape,
        x: r + (wf - 2.0 * r) * (0.3 + 0.4 * rng.unit()),
        y: r + (hf - 2.0 * r) * (0.3 + 0.4 * rng.unit()),
        r,
        large: true,
    };
    draw(&mut canvas, &object);
    let mut qas = vec![
        Qa::new(
            "single_shape",
            "What shape is in the image?",
            SHAPES[shape],
            SHAPES.len(),
        ),
        Qa::new(
            "single_colour",
            "What colour is the shape?",
            colour_name,
            COLOURS.len(),
        ),
    ];
    rng.shuffle(&mut qas);
    Example {
        image: canvas.img,
        caption: format!(
            "A large {colour_name} {} on a plain background.",
            SHAPES[shape]
        ),
        qas,
        record: json!({
            "objects": [{ "colour": colour_name, "shape": SHAPES[shape], "x": object.x, "y": object.y,
                          "r": object.r, "large": true }],
        }),
    }
}
