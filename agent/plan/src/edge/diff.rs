//! A unified diff of two texts, line by line (longest common subsequence), for the one
//! place a plan shows file contents to a human before replacing them: the first install
//! of the edge over a `haproxy.cfg` veza-agent did not write (a takeover).

/// `old` → `new` as a unified diff with `context` lines around each change, headed
/// `--- a_name` / `+++ b_name`; empty when the texts are equal.
pub fn unified(a_name: &str, old: &str, b_name: &str, new: &str, context: usize) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // The table is |a| × |b|: an edge config is a few hundred lines; a foreign file can be
    // anything (up to the edge reader's limit), and a plan must stay cheap.
    if a.len().saturating_mul(b.len()) > MAX_CELLS {
        return format!(
            "--- {a_name}\n+++ {b_name}\n(too large to show as a diff: {} and {} lines)\n",
            a.len(),
            b.len()
        );
    }
    let ops = edit_script(&a, &b);
    if ops.iter().all(|op| matches!(op, Op::Same(..))) {
        return String::new();
    }
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    // Group the script into hunks: changes closer than 2 × context share one.
    let changed: Vec<usize> = (0..ops.len()).filter(|&i| !matches!(ops[i], Op::Same(..))).collect();
    let mut start = 0;
    while start < changed.len() {
        let mut end = start;
        while end + 1 < changed.len() && changed[end + 1] - changed[end] <= 2 * context + 1 {
            end += 1;
        }
        let from = changed[start].saturating_sub(context);
        let to = (changed[end] + context + 1).min(ops.len());
        let (a_at, b_at) = lengths(&ops[..from]);
        let (a_len, b_len) = lengths(&ops[from..to]);
        // Line numbers are 1-based; an empty side is numbered by the line before it.
        let a_first = if a_len == 0 { a_at } else { a_at + 1 };
        let b_first = if b_len == 0 { b_at } else { b_at + 1 };
        out.push_str(&format!("@@ -{a_first},{a_len} +{b_first},{b_len} @@\n"));
        for op in &ops[from..to] {
            match op {
                Op::Same(i) => out.push_str(&format!(" {}\n", a[*i])),
                Op::Del(i) => out.push_str(&format!("-{}\n", a[*i])),
                Op::Add(j) => out.push_str(&format!("+{}\n", b[*j])),
            }
        }
        start = end + 1;
    }
    out
}

/// The largest comparison table built (4 M cells, 16 MiB).
const MAX_CELLS: usize = 4_000_000;

#[derive(Debug, Clone, Copy)]
enum Op {
    Same(usize),
    Del(usize),
    Add(usize),
}

/// Lines of `a` and `b` consumed by `ops`.
fn lengths(ops: &[Op]) -> (usize, usize) {
    ops.iter().fold((0, 0), |(x, y), op| match op {
        Op::Same(..) => (x + 1, y + 1),
        Op::Del(_) => (x + 1, y),
        Op::Add(_) => (x, y + 1),
    })
}

/// The shortest edit script by longest common subsequence (O(n·m): edge configs are a
/// few hundred lines). Deletions come before additions within a change.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] =
                if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same(i));
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(Op::Del(i));
            i += 1;
        } else {
            ops.push(Op::Add(j));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diffs_read_like_diff_u() {
        // (old, new, context, expected)
        let table = [
            ("a\nb\nc\n", "a\nb\nc\n", 3, ""),
            ("a\nb\nc\n", "a\nB\nc\n", 1, "--- old\n+++ new\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"),
            ("", "x\n", 3, "--- old\n+++ new\n@@ -0,0 +1,1 @@\n+x\n"),
            ("x\n", "", 3, "--- old\n+++ new\n@@ -1,1 +0,0 @@\n-x\n"),
            // Two changes far apart: two hunks.
            (
                "1\n2\n3\n4\n5\n6\n7\n8\n",
                "0\n2\n3\n4\n5\n6\n7\n9\n",
                1,
                "--- old\n+++ new\n@@ -1,2 +1,2 @@\n-1\n+0\n 2\n@@ -7,2 +7,2 @@\n 7\n-8\n+9\n",
            ),
            // Close changes: one hunk.
            (
                "1\n2\n3\n",
                "0\n2\n4\n",
                1,
                "--- old\n+++ new\n@@ -1,3 +1,3 @@\n-1\n+0\n 2\n-3\n+4\n",
            ),
        ];
        for (old, new, context, want) in table {
            assert_eq!(unified("old", old, "new", new, context), want, "{old:?} -> {new:?}");
        }
    }
}
