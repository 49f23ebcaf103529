//! Shared by the benchmark examples: a deterministic generator of nixpkgs-shaped Nix expressions, N
//! trivial derivations in `LAYERS` layers, each depending on a shared "stdenv-like" `core` and on 2–5
//! derivations of lower layers (one in seven has a `dev` output its dependents use).

/// How many layers the generated DAG has.
pub const LAYERS: usize = 10;

/// The expression: `prelude` must define `mk = name: outputs: deps: …` and `core`; `name(k)` names
/// derivation `k`. With `flat`, derivations depend on nothing (a wide, independent set). `seed` makes
/// the choice of dependencies reproducible.
pub fn layered_dag(n: usize, seed: u64, prelude: &str, name: impl Fn(usize) -> String, flat: bool) -> String {
    let edges = if flat { vec![Vec::new(); n] } else { layered_edges(n, seed, 2, 4) };
    let mut s = String::with_capacity(n * 80 + prelude.len());
    s.push_str(prelude);
    for (k, lower) in edges.iter().enumerate() {
        let mut deps = if flat { Vec::new() } else { vec!["core".to_string()] };
        for &d in lower {
            deps.push(if d % 7 == 3 { format!("d{d}.dev") } else { format!("d{d}") });
        }
        let outputs = if k % 7 == 3 { "[ \"out\" \"dev\" ]" } else { "[ \"out\" ]" };
        s.push_str(&format!("  d{k} = mk \"{}\" {outputs} [ {} ];\n", name(k), deps.join(" ")));
    }
    s.push_str("in [\n");
    for k in 0..n {
        s.push_str(&format!("  d{k}\n"));
    }
    s.push_str("]\n");
    s
}

/// The lower-layer dependencies of each of the `n` derivations of [`layered_dag`] (the shared `core` is
/// not included): derivation `k` of layer `l > 0` depends on `min + rand(spread)` derivations chosen among
/// layers `0..l` (repeats possible). `min = 2, spread = 4` is the shape of [`layered_dag`].
pub fn layered_edges(n: usize, seed: u64, min: usize, spread: usize) -> Vec<Vec<usize>> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound.max(1)
    };
    let per = n.div_ceil(LAYERS).max(1);
    (0..n)
        .map(|k| {
            let layer = k / per;
            if layer == 0 {
                return Vec::new();
            }
            (0..min + next(spread)).map(|_| next(layer * per)).collect()
        })
        .collect()
}
