//! A program whose loss is `n` chained `let`s over a linear model's output
//! (issue 17: compile time on straight-line code), for the test that its step
//! matches the reference (`tests/jit_matches_reference.rs`) and the compile
//! time benchmark (`benches/compile_time.rs`). It reads `data/digits.csv`:
//! compile it with `examples/` as the base directory.

/// Each `let` steps `a` by a little (`a * 0.9995 + 0.001`, then
/// `a + 0.001 * tanh(a)`), so every factor of the chain rule is close to 1
/// and the parameters' gradients stay of order one through 5,000 of them.
pub fn chained_lets(n: usize) -> String {
    let mut s = String::from(
        "module Linear(in: int, out: int) {
  param W: [in, out] = he_normal
  param b: [out]     = zeros
  fn forward(x: [B, in]) -> [B, out] = x @ W + b
}

data digits = csv(\"data/digits.csv\", label: \"label\", scale: 1/16) {
  train = rows[0..1437]
}

fn loss(m: Linear, x: [B, 64], y: [B] int) -> scalar {
  let a0 = m(x);
",
    );
    for i in 1..=n {
        let p = i - 1;
        if i % 2 == 1 {
            s += &format!("  let a{i} = a{p} * 0.9995 + 0.001;\n");
        } else {
            s += &format!("  let a{i} = a{p} + 0.001 * tanh(a{p});\n");
        }
    }
    s += &format!(
        "  cross_entropy(a{n}, y)
}}

train chain = Linear(64, 10) on digits.train {{
  loss      = loss
  optimizer = sgd(lr: 0.01)
  batch     = 64
  epochs    = 1
}}
"
    );
    s
}
