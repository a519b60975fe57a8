//! Modules that contain themselves, found before anything is instantiated.
//!
//! A module's members are built when the module is, so `module R { inner = R }`
//! (or `A` containing `B` containing `A`, or a stack `[R; 2]` inside `R`) would
//! instantiate forever; before this check it overflowed the stack. Whether a
//! member contains a module is visible in the source (module arguments are
//! numbers, never modules), so the module graph is exact and each cycle is
//! reported once, naming every module on it, whether or not a `train` block
//! uses it.

use super::error::{CycleLink, ErrorKind};
use crate::ast::{Expr, ExprKind, Item, Member, ModuleDef, Program};
use std::collections::HashMap;

/// One cycle per back edge of a depth-first walk over the modules in source
/// order: every module on a cycle is reported at least once, with no repeats.
pub(super) fn module_cycles(program: &Program) -> Vec<ErrorKind> {
    let defs: Vec<&ModuleDef> = program.items.iter().filter_map(|i| if let Item::Module(m) = i { Some(m) } else { None }).collect();
    // The last definition of a name wins, as in `Session::modules`.
    let index: HashMap<&str, usize> = defs.iter().enumerate().map(|(i, m)| (m.name.name.as_str(), i)).collect();
    let edges: Vec<Vec<(CycleLink, usize)>> = defs.iter().map(|m| contained_modules(m, &index)).collect();
    let mut state = vec![State::New; defs.len()];
    let mut cycles = Vec::new();
    for root in 0..defs.len() {
        if state[root] == State::New {
            walk(root, &edges, &mut state, &mut cycles);
        }
    }
    cycles.into_iter().map(|links| ErrorKind::ModuleCycle { links }).collect()
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    New,
    /// On the current path of the walk.
    Open,
    Done,
}

/// Depth-first from `root` with an explicit stack (a chain of 10,000 nested
/// modules must not overflow this walk either); each edge back into the
/// current path closes a cycle.
fn walk(root: usize, edges: &[Vec<(CycleLink, usize)>], state: &mut [State], cycles: &mut Vec<Vec<CycleLink>>) {
    // (module, index of its next edge to follow); `path[k]` is the link by which `stack[k + 1]` was entered.
    let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
    let mut path: Vec<&CycleLink> = Vec::new();
    state[root] = State::Open;
    while let Some(&(module, next)) = stack.last() {
        let Some((link, to)) = edges[module].get(next) else {
            state[module] = State::Done;
            stack.pop();
            path.pop();
            continue;
        };
        if let Some(top) = stack.last_mut() {
            top.1 += 1;
        }
        match state[*to] {
            State::New => {
                state[*to] = State::Open;
                stack.push((*to, 0));
                path.push(link);
            }
            State::Open => {
                let start = stack.iter().position(|(m, _)| m == to).unwrap_or(0);
                let mut cycle: Vec<CycleLink> = path.iter().skip(start).map(|l| (*l).clone()).collect();
                cycle.push(link.clone());
                cycles.push(cycle);
            }
            State::Done => {}
        }
    }
}

/// The modules `def`'s members contain, with the member that contains each.
fn contained_modules(def: &ModuleDef, index: &HashMap<&str, usize>) -> Vec<(CycleLink, usize)> {
    def.members
        .iter()
        .filter_map(|m| match m {
            Member::Sub(s) => {
                let name = instantiated_name(&s.value)?;
                let to = *index.get(name)?;
                let link = CycleLink { container: def.name.name.clone(), contained: name.to_string(), span: s.value.span };
                Some((link, to))
            }
            Member::Param(_) | Member::Fn(_) => None,
        })
        .collect()
}

/// The module a member's value instantiates: `R`, `R(4)`, `[R; 2]`, `[R(4); 2]`
/// (the forms `Ctx::instantiate_in` accepts; anything else is an error there).
fn instantiated_name(e: &Expr) -> Option<&str> {
    match &e.kind {
        ExprKind::Name(n) => Some(n),
        ExprKind::Call { callee, .. } => match &callee.kind {
            ExprKind::Name(n) => Some(n),
            _ => None,
        },
        ExprKind::Repeat { item, .. } => instantiated_name(item),
        ExprKind::Number { .. }
        | ExprKind::Str(_)
        | ExprKind::Field(..)
        | ExprKind::Index { .. }
        | ExprKind::Binary { .. }
        | ExprKind::Neg(_)
        | ExprKind::List(_)
        | ExprKind::On { .. } => None,
    }
}
