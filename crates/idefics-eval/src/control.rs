//! The text-only control of a visual benchmark: every question is asked with another question's images.
//!
//! A model that reads its images scores lower with the wrong ones; a model that answers from the question
//! alone (a language prior) scores the same. Reporting both numbers side by side says which of the two a
//! score measures, which chance and majority levels alone cannot (a prior can beat chance).

use crate::data::EvalSample;
use std::collections::BTreeMap;

/// Gives each sample the images of another sample of the same source: the one half the source away in
/// input order, or the next one after it whose images differ (questions about one image stay together in
/// the data, so the nearest neighbours usually share it). Deterministic. Returns how many samples got other
/// images; a sample whose source holds no other images keeps its own and is not counted.
pub fn swap_images_within_sources(samples: &mut [EvalSample]) -> usize {
    let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        groups.entry(s.source.clone()).or_default().push(i);
    }
    let original: Vec<_> = samples.iter().map(|s| s.images.clone()).collect();
    let mut swapped = 0;
    for members in groups.values() {
        let n = members.len();
        for (p, &i) in members.iter().enumerate() {
            let other = (0..n)
                .map(|j| members[(p + n / 2 + j) % n])
                .find(|&k| original[k] != original[i]);
            if let Some(k) = other {
                samples[i].images = original[k].clone();
                swapped += 1;
            }
        }
    }
    swapped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageSource;

    fn sample(id: &str, source: &str, image: u8) -> EvalSample {
        EvalSample {
            id: id.into(),
            task: "t".into(),
            images: vec![ImageSource::Bytes(vec![image])],
            question: format!("q{id}"),
            answers: vec!["a".into()],
            source: Some(source.into()),
            ..EvalSample::default()
        }
    }

    #[test]
    fn every_sample_gets_an_image_of_its_source_that_is_not_its_own() {
        // Three questions per image, as the synthetic held-out set has them, in two sources.
        let mut samples: Vec<EvalSample> = (0..15)
            .map(|i| sample(&i.to_string(), if i < 9 { "a" } else { "b" }, (i / 3) as u8))
            .collect();
        let before = samples.clone();
        assert_eq!(swap_images_within_sources(&mut samples), 15);
        for (s, b) in samples.iter().zip(&before) {
            assert_ne!(s.images, b.images, "sample {}", s.id);
            assert_eq!((&s.question, &s.answers), (&b.question, &b.answers));
            let from = before.iter().find(|o| o.images == s.images).unwrap();
            assert_eq!(
                from.source, s.source,
                "sample {} took an image of another source",
                s.id
            );
        }
        // Deterministic.
        let mut again = before.clone();
        swap_images_within_sources(&mut again);
        assert_eq!(again, samples);
    }

    #[test]
    fn a_source_with_a_single_image_keeps_it() {
        let mut samples = vec![
            sample("0", "a", 1),
            sample("1", "a", 1),
            sample("2", "b", 2),
        ];
        assert_eq!(swap_images_within_sources(&mut samples), 0);
        assert_eq!(samples[0].images, vec![ImageSource::Bytes(vec![1])]);
    }
}
