# The 40 words of `idefics data synth`'s OCR images (crates/idefics-data/src/synth/ocr.rs, WORDS), for the probes.
WORDS = ["apple", "river", "stone", "cloud", "green", "house", "train", "music", "tiger", "ocean", "paper", "light",
         "horse", "table", "chair", "bread", "plant", "clock", "water", "smile", "dream", "storm", "beach", "forest",
         "garden", "window", "rocket", "silver", "yellow", "planet", "market", "doctor", "winter", "summer", "island",
         "castle", "bridge", "candle", "pencil", "mirror"]
