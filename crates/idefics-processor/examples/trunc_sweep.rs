use idefics_processor::image::{decode_image, DecodeLimits};
fn main() {
    for p in std::env::args().skip(1) {
        let data = std::fs::read(&p).unwrap();
        let acc: Vec<usize> = (0..=data.len())
            .filter(|&n| decode_image(&data[..n], &DecodeLimits::default()).is_ok())
            .collect();
        let full = decode_image(&data, &DecodeLimits::default()).unwrap();
        for &n in &acc {
            let d = decode_image(&data[..n], &DecodeLimits::default()).unwrap();
            if d != full {
                println!("  {n}: pixels differ from the full file");
            }
        }
        println!(
            "{} {} accepted: {} {:?} {:?}",
            p.rsplit('/').next().unwrap(),
            data.len(),
            acc.len(),
            &acc[..acc.len().min(5)],
            &acc[acc.len().saturating_sub(3)..]
        );
    }
}
