//! Scenes of shapes: colour, shape, count (1-9), relative position and size comparison (CLEVR-like, 2-D).

use serde_json::json;

use super::canvas::Canvas;
use super::task::{choose_questions, light_background, random_size, region, Example, Qa, COLOURS};
use crate::rng::Rng;

/// Shape names (the answer vocabulary of shape questions).
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];

/// One drawn object.
#[derive(Debug, Clone)]
pub struct Object {
    pub colour: usize,
    pub shape: usize,
    pub x: f32,
    pub y: f32,
    /// Half the object's extent.
    pub r: f32,
    pub large: bool,
}

impl Object {
    fn name(&self) -> String {
        format!("{} {}", COLOURS[self.colour].0, SHAPES[self.shape])
    }
}

/// Draws `o` filled with its colour.
pub(super) fn draw(c: &mut Canvas, o: &Object) {
    let col = COLOURS[o.colour].1;
    let (x, y, r) = (o.x, o.y, o.r);
    match o.shape {
        0 => c.fill_circle(x, y, r, col),
        1 => c.fill_convex(
            &[
                (x - r, y - r),
                (x + r, y - r),
                (x + r, y + r),
                (x - r, y + r),
            ],
            col,
        ),
        2 => c.fill_convex(
            &[(x, y - r), (x + r, y + r * 0.85), (x - r, y + r * 0.85)],
            col,
        ),
        _ => c.fill_convex(&[(x, y - r), (x + r, y), (x, y + r), (x - r, y)], col),
    }
}

/// Generates one scene.
pub fn generate(rng: &mut Rng) -> Example {
    let (w, h) = random_size(rng, 224, 448);
    let (wf, hf) = (w as f32, h as f32);
    let mut canvas = Canvas::new(w, h, light_background(rng));
    let target = rng.range(1, 9) as usize;
    // Distinct (colour, shape) pairs, so "the red circle" always names one object.
    let combos = rng.sample_indices(COLOURS.len() * SHAPES.len(), target);
    let unit = wf.min(hf);
    let small_r = unit * if target > 5 { 0.045 } else { 0.06 };
    let mut objects: Vec<Object> = Vec::new();
    for combo in combos {
        let large = rng.chance(0.5);
        // Large objects are 1.8-2.2x small ones, so "bigger" is never ambiguous.
        let r = if large {
            small_r * (1.8 + rng.unit() * 0.4)
        } else {
            small_r * (0.9 + rng.unit() * 0.2)
        };
        for _attempt in 0..200 {
            let x = r + 2.0 + rng.unit() * (wf - 2.0 * r - 4.0);
            let y = r + 2.0 + rng.unit() * (hf - 2.0 * r - 4.0);
            let clear = objects
                .iter()
                .all(|o| ((o.x - x).powi(2) + (o.y - y).powi(2)).sqrt() > (o.r + r) * 1.5 + 4.0);
            if clear {
                objects.push(Object {
                    colour: combo / SHAPES.len(),
                    shape: combo % SHAPES.len(),
                    x,
                    y,
                    r,
                    large,
                });
                break;
            }
        }
    }
    for o in &objects {
        draw(&mut canvas, o);
    }

    let n = objects.len();
    let mut qas = vec![Qa::new(
        "count_total",
        "How many shapes are in the image?",
        n.to_string(),
        9,
    )];
    if let Some(o) = rng.pick(&objects) {
        let k = objects.iter().filter(|p| p.colour == o.colour).count();
        qas.push(Qa::new(
            "count_colour",
            format!("How many {} shapes are there?", COLOURS[o.colour].0),
            k.to_string(),
            9,
        ));
        let k = objects.iter().filter(|p| p.shape == o.shape).count();
        let plural = format!("{}s", SHAPES[o.shape]);
        qas.push(Qa::new(
            "count_shape",
            format!("How many {plural} are there?"),
            k.to_string(),
            9,
        ));
        if objects.iter().filter(|p| p.shape == o.shape).count() == 1 {
            let qa = Qa::new(
                "colour",
                format!("What colour is the {}?", SHAPES[o.shape]),
                COLOURS[o.colour].0,
                COLOURS.len(),
            );
            let names: Vec<&str> = COLOURS.iter().map(|c| c.0).collect();
            qas.push(if rng.chance(0.3) {
                qa.into_multiple_choice(rng, &names)
            } else {
                qa
            });
        }
        if objects.iter().filter(|p| p.colour == o.colour).count() == 1 {
            let qa = Qa::new(
                "shape",
                format!("What shape is the {} object?", COLOURS[o.colour].0),
                SHAPES[o.shape],
                SHAPES.len(),
            );
            qas.push(if rng.chance(0.3) {
                qa.into_multiple_choice(rng, &SHAPES)
            } else {
                qa
            });
        }
    }
    // Existence: half the time a pair that is present, half the time one that is absent.
    let (ec, es) = if rng.chance(0.5) && n > 0 {
        let o = &objects[rng.below(n)];
        (o.colour, o.shape)
    } else {
        (rng.below(COLOURS.len()), rng.below(SHAPES.len()))
    };
    let present = objects.iter().any(|o| o.colour == ec && o.shape == es);
    qas.push(Qa::new(
        "exists",
        format!("Is there a {} {} in the image?", COLOURS[ec].0, SHAPES[es]),
        if present { "yes" } else { "no" },
        2,
    ));
    if n >= 2 {
        let idx = rng.sample_indices(n, 2);
        let (a, b) = (&objects[idx[0]], &objects[idx[1]]);
        if (a.x - b.x).abs() > a.r + b.r {
            let yes = a.x < b.x;
            qas.push(Qa::new(
                "left_of",
                format!("Is the {} to the left of the {}?", a.name(), b.name()),
                if yes { "yes" } else { "no" },
                2,
            ));
        }
        if (a.y - b.y).abs() > a.r + b.r {
            let yes = a.y < b.y;
            qas.push(Qa::new(
                "above",
                format!("Is the {} above the {}?", a.name(), b.name()),
                if yes { "yes" } else { "no" },
                2,
            ));
        }
        if a.large != b.large {
            let yes = a.large;
            qas.push(Qa::new(
                "bigger",
                format!("Is the {} bigger than the {}?", a.name(), b.name()),
                if yes { "yes" } else { "no" },
                2,
            ));
        }
    }
    let qas = choose_questions(rng, qas, usize::MAX);

    let parts: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "a {} {} at the {}",
                if o.large { "large" } else { "small" },
                o.name(),
                region(o.x, o.y, wf, hf)
            )
        })
        .collect();
    let caption = format!(
        "{} {} on a plain background: {}.",
        n,
        if n == 1 { "shape" } else { "shapes" },
        parts.join(", ")
    );
    let record = json!({
        "objects": objects.iter().map(|o| json!({
            "colour": COLOURS[o.colour].0, "shape": SHAPES[o.shape],
            "x": o.x, "y": o.y, "r": o.r, "large": o.large,
        })).collect::<Vec<_>>(),
    });
    Example {
        image: canvas.img,
        caption,
        qas,
        record,
    }
}
