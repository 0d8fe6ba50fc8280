//! What the engine can call, read from Rhai's own function metadata (name,
//! parameter count and types), for the static check, the REPL's help and the
//! parity table test.

use std::any::TypeId;

use rhai::{Engine, FnAccess};

use crate::machine::Machine;

/// One public function or method registered in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The name a script calls: a property getter `get$x` or setter `set$x`
    /// is `x`.
    pub name: String,
    /// Parameters, the object of a method call included.
    pub arity: usize,
    /// The first parameter is a [`Machine`]: callable as `machine.name(…)`.
    pub on_machine: bool,
    /// A property getter or setter (`m.name`), not a call.
    pub property: bool,
    /// The parameters' types (strings as `ImmutableString`, any value as
    /// `Dynamic`).
    pub param_types: Vec<TypeId>,
}

/// Every public function of the engine; with `standard`, Rhai's standard
/// packages too.
pub fn registered(engine: &Engine, standard: bool) -> Vec<Registered> {
    engine.collect_fn_metadata(
        None,
        |info| {
            let f = info.metadata;
            if f.access != FnAccess::Public {
                return None;
            }
            let (name, property) = match f
                .name
                .strip_prefix("get$")
                .or_else(|| f.name.strip_prefix("set$"))
            {
                Some(p) => (p, true),
                None => (f.name.as_str(), false),
            };
            Some(Registered {
                name: name.to_owned(),
                arity: f.num_params,
                on_machine: f.param_types.first() == Some(&TypeId::of::<Machine>()),
                property,
                param_types: f.param_types.to_vec(),
            })
        },
        standard,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::test_engine;

    #[test]
    fn methods_properties_and_arities_come_from_the_metadata() {
        let all = registered(&test_engine(), false);
        let find = |name: &str, arity: usize| {
            all.iter()
                .find(|r| r.name == name && r.arity == arity)
                .unwrap_or_else(|| panic!("{name}/{arity} not registered"))
        };
        assert!(find("succeed", 2).on_machine);
        assert!(!find("start_all", 0).on_machine);
        let name = find("name", 1);
        assert!(name.property && name.on_machine);
        assert!(!all.iter().any(|r| r.name == "len"), "no standard package");
        assert!(registered(&test_engine(), true)
            .iter()
            .any(|r| r.name == "len"));
    }
}
