//! Idefics2 processing: files -> pixel_values, pixel_attention_mask and input_ids, as transformers computes them.
