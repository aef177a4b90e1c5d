fn main() {
    println!("idefics");
}
