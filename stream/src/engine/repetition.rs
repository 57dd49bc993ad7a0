//! Cuts the decoding failure every LLM transcriber shows on hard audio: a
//! phrase repeated over and over until the token limit. A run of the same
//! 1-10 word phrase three or more times in a row keeps one copy.

/// `text` with every looping phrase reduced to one occurrence.
pub fn cut_repetitions(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key: Vec<String> = words
        .iter()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .collect();
    let mut keep = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let mut skipped = false;
        for n in 1..=10usize {
            if i + 3 * n > words.len() {
                break;
            }
            let repeats = (1..)
                .take_while(|r| {
                    i + (r + 1) * n <= words.len()
                        && key[i..i + n] == key[i + r * n..i + (r + 1) * n]
                })
                .count();
            // Three copies in a row (or two for long phrases) is a loop, not speech.
            if repeats >= 2 || (n >= 5 && repeats >= 1) {
                keep.extend_from_slice(&words[i..i + n]);
                i += (repeats + 1) * n;
                skipped = true;
                break;
            }
        }
        if !skipped {
            keep.push(words[i]);
            i += 1;
        }
    }
    keep.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_cut_to_one_copy() {
        assert_eq!(
            cut_repetitions("I'm here to help you with your business. I'm here to help you with your business. I'm here to help you with your business."),
            "I'm here to help you with your business."
        );
        assert_eq!(cut_repetitions("no no no no no"), "no");
        assert_eq!(cut_repetitions("go to the the the shop"), "go to the shop");
    }

    #[test]
    fn ordinary_speech_is_left_alone() {
        for s in [
            "that that is is that that is not is not",
            "very very good",
            "the cat sat on the mat",
            "",
        ] {
            assert_eq!(
                cut_repetitions(s),
                s.split_whitespace().collect::<Vec<_>>().join(" "),
                "{s}"
            );
        }
    }
}
