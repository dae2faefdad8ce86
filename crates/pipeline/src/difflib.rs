//! Python's `difflib.SequenceMatcher(None, a, b).get_opcodes()`, which the EDICT authors use to
//! align the source and target prompts' tokens for prompt-to-prompt editing. Ported rule for rule
//! (longest matching block, leftmost on ties, recursion on both sides, "popular element" autojunk
//! for sequences of 200 or more) so every prompt pair aligns as in the authors' code; the only
//! crate port (`difflib` 0.4) inverts the autojunk filter.

use std::collections::HashMap;
use std::hash::Hash;

/// What an opcode does to turn `a[a0..a1]` into `b[b0..b1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Equal,
    Replace,
    Delete,
    Insert,
}

impl Tag {
    pub fn name(self) -> &'static str {
        match self {
            Tag::Equal => "equal",
            Tag::Replace => "replace",
            Tag::Delete => "delete",
            Tag::Insert => "insert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opcode {
    pub tag: Tag,
    pub a0: usize,
    pub a1: usize,
    pub b0: usize,
    pub b1: usize,
}

/// `b`'s positions of each element, without "popular" elements when `b` is long (autojunk).
fn index_of<T: Eq + Hash>(b: &[T]) -> HashMap<&T, Vec<usize>> {
    let mut b2j: HashMap<&T, Vec<usize>> = HashMap::new();
    for (j, e) in b.iter().enumerate() {
        b2j.entry(e).or_default().push(j);
    }
    if b.len() >= 200 {
        let most = b.len() / 100 + 1;
        b2j.retain(|_, js| js.len() <= most);
    }
    b2j
}

/// The longest block `a[i..i+k] == b[j..j+k]` inside the ranges, smallest `i` (then `j`) on ties;
/// found among non-popular elements, then extended over equal neighbours (popular ones too).
fn longest_match<T: Eq + Hash>(
    a: &[T],
    b: &[T],
    b2j: &HashMap<&T, Vec<usize>>,
    (alo, ahi, blo, bhi): (usize, usize, usize, usize),
) -> (usize, usize, usize) {
    let (mut bi, mut bj, mut size) = (alo, blo, 0);
    // length of the match ending at (i-1, j), per j
    let mut j2len: HashMap<usize, usize> = HashMap::new();
    for (i, e) in a.iter().enumerate().take(ahi).skip(alo) {
        let mut next = HashMap::new();
        for &j in b2j.get(e).into_iter().flatten() {
            if j < blo {
                continue;
            }
            if j >= bhi {
                break;
            }
            let k = j.checked_sub(1).and_then(|p| j2len.get(&p)).copied().unwrap_or(0) + 1;
            next.insert(j, k);
            if k > size {
                (bi, bj, size) = (i + 1 - k, j + 1 - k, k);
            }
        }
        j2len = next;
    }
    while bi > alo && bj > blo && a[bi - 1] == b[bj - 1] {
        (bi, bj, size) = (bi - 1, bj - 1, size + 1);
    }
    while bi + size < ahi && bj + size < bhi && a[bi + size] == b[bj + size] {
        size += 1;
    }
    (bi, bj, size)
}

/// `difflib.SequenceMatcher(None, a, b).get_opcodes()`.
pub fn opcodes<T: Eq + Hash>(a: &[T], b: &[T]) -> Vec<Opcode> {
    let b2j = index_of(b);
    let mut blocks = Vec::new();
    let mut queue = vec![(0, a.len(), 0, b.len())];
    while let Some(r @ (alo, ahi, blo, bhi)) = queue.pop() {
        let (i, j, k) = longest_match(a, b, &b2j, r);
        if k > 0 {
            blocks.push((i, j, k));
            if alo < i && blo < j {
                queue.push((alo, i, blo, j));
            }
            if i + k < ahi && j + k < bhi {
                queue.push((i + k, ahi, j + k, bhi));
            }
        }
    }
    blocks.sort_unstable();
    // merge adjacent blocks, end with the (len a, len b, 0) sentinel
    let mut merged: Vec<(usize, usize, usize)> = Vec::new();
    for (i, j, k) in blocks {
        match merged.last_mut() {
            Some((pi, pj, pk)) if *pi + *pk == i && *pj + *pk == j => *pk += k,
            _ => merged.push((i, j, k)),
        }
    }
    merged.push((a.len(), b.len(), 0));

    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    for (ai, bj, size) in merged {
        let tag = match (i < ai, j < bj) {
            (true, true) => Some(Tag::Replace),
            (true, false) => Some(Tag::Delete),
            (false, true) => Some(Tag::Insert),
            (false, false) => None,
        };
        if let Some(tag) = tag {
            out.push(Opcode { tag, a0: i, a1: ai, b0: j, b1: bj });
        }
        (i, j) = (ai + size, bj + size);
        if size > 0 {
            out.push(Opcode { tag: Tag::Equal, a0: ai, a1: i, b0: bj, b1: j });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(a: &str, b: &str) -> Vec<(&'static str, usize, usize, usize, usize)> {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        opcodes(&a, &b).iter().map(|o| (o.tag.name(), o.a0, o.a1, o.b0, o.b1)).collect()
    }

    #[test]
    fn python_documentation_example() {
        // difflib's own docs: SequenceMatcher(None, "qabxcd", "abycdf").get_opcodes()
        assert_eq!(
            ops("qabxcd", "abycdf"),
            [
                ("delete", 0, 1, 0, 0),
                ("equal", 1, 3, 0, 2),
                ("replace", 3, 4, 2, 3),
                ("equal", 4, 6, 3, 5),
                ("insert", 6, 6, 5, 6)
            ]
        );
        assert_eq!(ops("", ""), []);
        assert_eq!(ops("ab", ""), [("delete", 0, 2, 0, 0)]);
    }
}
