//! Word and character error rates, LRS3-style: text normalised (lower case,
//! braces and punctuation other than apostrophes removed), then
//! Levenshtein edits counted against the reference length; corpus rates sum
//! edits and reference lengths over all clips.

/// Lower case, `{}` and punctuation (except apostrophes inside words) removed,
/// whitespace collapsed.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() || c == '\'' {
            out.push(c);
        } else {
            out.push(' ');
        }
    }
    out.split_whitespace()
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Minimum substitutions + insertions + deletions turning `hyp` into `reference`.
pub fn edit_distance<T: PartialEq>(reference: &[T], hyp: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=hyp.len()).collect();
    let mut cur = vec![0; hyp.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, h) in hyp.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hyp.len()]
}

/// Edits and reference length of one clip, in words and in characters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errors {
    pub word_edits: usize,
    pub words: usize,
    pub char_edits: usize,
    pub chars: usize,
}

impl Errors {
    /// Errors of `hyp` against `reference`, both normalised here.
    pub fn of(reference: &str, hyp: &str) -> Self {
        let (r, h) = (normalize(reference), normalize(hyp));
        let rw: Vec<&str> = r.split_whitespace().collect();
        let hw: Vec<&str> = h.split_whitespace().collect();
        let rc: Vec<char> = r.chars().collect();
        let hc: Vec<char> = h.chars().collect();
        Errors {
            word_edits: edit_distance(&rw, &hw),
            words: rw.len(),
            char_edits: edit_distance(&rc, &hc),
            chars: rc.len(),
        }
    }

    pub fn add(&mut self, other: Errors) {
        self.word_edits += other.word_edits;
        self.words += other.words;
        self.char_edits += other.char_edits;
        self.chars += other.chars;
    }

    /// Word error rate in percent (edits / reference words); an empty
    /// reference gives 0 when the hypothesis is empty too, else 100 per word.
    pub fn wer(&self) -> f64 {
        rate(self.word_edits, self.words)
    }

    pub fn cer(&self) -> f64 {
        rate(self.char_edits, self.chars)
    }
}

fn rate(edits: usize, len: usize) -> f64 {
    if len == 0 {
        if edits == 0 {
            0.0
        } else {
            100.0 * edits as f64
        }
    } else {
        100.0 * edits as f64 / len as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_the_protocol() {
        assert_eq!(
            normalize("Text:  {LAUGH} It's  FINE, isn't it?"),
            "text laugh it's fine isn't it"
        );
        assert_eq!(normalize("'quoted' words"), "quoted words");
    }

    #[test]
    fn hand_computed_cases() {
        // One substitution in four words.
        let e = Errors::of("the cat sat down", "the cat sat town");
        assert_eq!((e.word_edits, e.words), (1, 4));
        assert_eq!(e.wer(), 25.0);
        assert_eq!((e.char_edits, e.chars), (1, 16));
        // Insertion.
        assert_eq!(Errors::of("a b", "a x b").word_edits, 1);
        // Deletions.
        assert_eq!(Errors::of("a b c", "a").word_edits, 2);
        // Empty hypothesis: every reference word is deleted.
        let e = Errors::of("one two three", "");
        assert_eq!((e.word_edits, e.words, e.wer()), (3, 3, 100.0));
        // Empty reference: insertions, and nothing vs nothing.
        let e = Errors::of("", "hello there");
        assert_eq!((e.word_edits, e.words), (2, 0));
        assert_eq!(e.wer(), 200.0);
        assert_eq!(Errors::of("", "").wer(), 0.0);
        // Case and punctuation do not count.
        assert_eq!(Errors::of("HELLO WORLD", "Hello, world.").word_edits, 0);
    }

    #[test]
    fn corpus_rate_sums_edits_and_lengths() {
        let mut total = Errors::default();
        total.add(Errors::of("a b c d", "a b c d"));
        total.add(Errors::of("e f", "x f"));
        assert_eq!(total.wer(), 100.0 / 6.0);
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        let k: Vec<char> = "kitten".chars().collect();
        let s: Vec<char> = "sitting".chars().collect();
        assert_eq!(edit_distance(&k, &s), 3);
    }
}
