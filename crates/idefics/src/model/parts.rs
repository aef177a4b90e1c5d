//! A block's checkpoint names, written once: each block keeps one list of its parts' names, in field order;
//! `load` takes a `VarBuilder` per name from it ([`builders`]) and `visit_params` pairs the same list with the
//! parts ([`visit_parts`]), so a name cannot differ between loading and walking the parameters.

use crate::nn::{join_path, Linear, ParamVisitor, VisitParams};
use candle_core::Result;
use candle_nn::VarBuilder;

/// One named part of a block: a linear layer, or a block that walks its own parameters.
pub(crate) enum Part<'a> {
    Linear(&'a mut Linear),
    Block(&'a mut dyn VisitParams),
}

/// A `VarBuilder` under each name, in the list's order.
pub(crate) fn builders<'a, const N: usize>(
    vb: &VarBuilder<'a>,
    names: [&str; N],
) -> [VarBuilder<'a>; N] {
    names.map(|name| vb.pp(name))
}

/// Visits each part under `prefix.name`, in the list's order.
pub(crate) fn visit_parts<const N: usize>(
    prefix: &str,
    v: &mut dyn ParamVisitor,
    names: [&str; N],
    parts: [Part<'_>; N],
) -> Result<()> {
    for (name, part) in names.into_iter().zip(parts) {
        let path = join_path(prefix, name);
        match part {
            Part::Linear(layer) => v.linear(&path, layer)?,
            Part::Block(block) => block.visit_params(&path, v)?,
        }
    }
    Ok(())
}
