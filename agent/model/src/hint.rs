//! Did-you-mean hints: the known name closest to a misspelt one. Used by `parse` (serde's
//! unknown field or variant) and by `validate` (unknown references), so neither module
//! imports the other.

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates.map(|c| (levenshtein(word, c), c)).filter(|(d, _)| *d <= limit).min().map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_hints() {
        assert_eq!(closest("blu", ["blue", "green"].into_iter()), Some("blue"));
        assert_eq!(closest("xyz", ["blue", "green"].into_iter()), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
