//! Transcription prompts: a template per input (audio, video, both) with
//! `{audio}` / `{video}` where the projected features go, the text around
//! them tokenised piece by piece (as Llama-AVSR tokenises its prompt parts
//! on their own).

use avlm_llm::Tokenizer;

use crate::bundle::manifest::Prompts;
use crate::bundle::BundleError;

/// What a transcription reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpeechInput {
    Audio,
    Video,
    AudioVideo,
}

impl SpeechInput {
    pub const ALL: [SpeechInput; 3] = [
        SpeechInput::Audio,
        SpeechInput::Video,
        SpeechInput::AudioVideo,
    ];

    pub fn index(self) -> usize {
        match self {
            SpeechInput::Audio => 0,
            SpeechInput::Video => 1,
            SpeechInput::AudioVideo => 2,
        }
    }

    pub fn has_audio(self) -> bool {
        self != SpeechInput::Video
    }

    pub fn has_video(self) -> bool {
        self != SpeechInput::Audio
    }

    /// The manifest key of this input's prompt.
    pub fn prompt_key(self) -> &'static str {
        match self {
            SpeechInput::Audio => "prompts.transcribe_audio",
            SpeechInput::Video => "prompts.transcribe_video",
            SpeechInput::AudioVideo => "prompts.transcribe_audio_video",
        }
    }

    fn template(self, prompts: &Prompts) -> Option<&String> {
        match self {
            SpeechInput::Audio => prompts.transcribe_audio.as_ref(),
            SpeechInput::Video => prompts.transcribe_video.as_ref(),
            SpeechInput::AudioVideo => prompts.transcribe_audio_video.as_ref(),
        }
    }
}

/// One piece of a prompt after its leading text.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(Vec<u32>),
    Audio,
    Video,
}

/// A parsed prompt template.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    /// The text before the first placeholder (the same for every utterance:
    /// its KV is computed once).
    pub prefix: Vec<u32>,
    /// Everything after it, in order.
    pub rest: Vec<Piece>,
}

impl PromptTemplate {
    /// The template of `input` in `prompts`, if the bundle has one; an error
    /// when it lacks or repeats a placeholder `input` needs, or has one it
    /// does not.
    pub fn of(
        input: SpeechInput,
        prompts: &Prompts,
        tokenizer: &Tokenizer,
    ) -> Result<Option<Self>, BundleError> {
        let Some(text) = input.template(prompts) else {
            return Ok(None);
        };
        let key = input.prompt_key();
        for (mark, wanted) in [
            ("{audio}", input.has_audio()),
            ("{video}", input.has_video()),
        ] {
            let n = text.matches(mark).count();
            if n != usize::from(wanted) {
                return Err(BundleError::Manifest(if wanted {
                    format!("{key} must contain {mark} exactly once")
                } else {
                    format!("{key} must not contain {mark}")
                }));
            }
        }
        let mut rest = Vec::new();
        let mut prefix = None;
        let mut left = text.as_str();
        loop {
            let next = [("{audio}", Piece::Audio), ("{video}", Piece::Video)]
                .into_iter()
                .filter_map(|(mark, piece)| left.find(mark).map(|at| (at, mark, piece)))
                .min_by_key(|(at, _, _)| *at);
            let (text, after) = match &next {
                Some((at, mark, _)) => (&left[..*at], &left[at + mark.len()..]),
                None => (left, ""),
            };
            let ids = tokenizer.encode(text)?;
            match prefix {
                None => prefix = Some(ids),
                Some(_) if !ids.is_empty() => rest.push(Piece::Text(ids)),
                Some(_) => {}
            }
            match next {
                Some((_, _, piece)) => rest.push(piece),
                None => break,
            }
            left = after;
        }
        Ok(Some(PromptTemplate {
            prefix: prefix.unwrap_or_default(),
            rest,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts(audio: Option<&str>, video: Option<&str>, av: Option<&str>) -> Prompts {
        Prompts {
            transcribe_audio: audio.map(str::to_string),
            transcribe_video: video.map(str::to_string),
            transcribe_audio_video: av.map(str::to_string),
            caption: None,
        }
    }

    fn tokenizer() -> Tokenizer {
        let json = r#"{"version":"1.0","added_tokens":[
            {"id":0,"content":"<a>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
            {"id":1,"content":"</a>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
            {"id":2,"content":"<v>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
            {"id":3,"content":"</v>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"<a>":0,"</a>":1,"<v>":2,"</v>":3,"x":4,"y":5,"[UNK]":6},"unk_token":"[UNK]"}}"#;
        let path = std::env::temp_dir().join(format!(
            "avlm-prompt-test-{}-{:?}.json",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, json).unwrap();
        let t = Tokenizer::from_file(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        t
    }

    #[test]
    fn a_template_splits_into_its_prefix_text_and_placeholders_in_order() {
        let t = tokenizer();
        let p = prompts(None, None, Some("<a>{audio}</a><v>{video}</v>x"));
        let tpl = PromptTemplate::of(SpeechInput::AudioVideo, &p, &t)
            .unwrap()
            .unwrap();
        assert_eq!(tpl.prefix, vec![0]);
        assert_eq!(
            tpl.rest,
            vec![
                Piece::Audio,
                Piece::Text(vec![1, 2]),
                Piece::Video,
                Piece::Text(vec![3, 4]),
            ]
        );
        // video before audio, and nothing between them
        let p = prompts(None, None, Some("{video}{audio}y"));
        let tpl = PromptTemplate::of(SpeechInput::AudioVideo, &p, &t)
            .unwrap()
            .unwrap();
        assert!(tpl.prefix.is_empty());
        assert_eq!(
            tpl.rest,
            vec![Piece::Video, Piece::Audio, Piece::Text(vec![5])]
        );
    }

    #[test]
    fn missing_repeated_or_foreign_placeholders_are_refused_by_key() {
        let t = tokenizer();
        let cases = [
            (
                SpeechInput::Audio,
                prompts(Some("x"), None, None),
                "transcribe_audio must contain {audio}",
            ),
            (
                SpeechInput::Audio,
                prompts(Some("{audio}{audio}"), None, None),
                "exactly once",
            ),
            (
                SpeechInput::Audio,
                prompts(Some("{audio}{video}"), None, None),
                "transcribe_audio must not contain {video}",
            ),
            (
                SpeechInput::Video,
                prompts(None, Some("{audio}{video}"), None),
                "transcribe_video must not contain {audio}",
            ),
            (
                SpeechInput::AudioVideo,
                prompts(None, None, Some("{audio}")),
                "transcribe_audio_video must contain {video}",
            ),
        ];
        for (input, p, want) in cases {
            let e = PromptTemplate::of(input, &p, &t).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(PromptTemplate::of(
            SpeechInput::Video,
            &prompts(Some("{audio}"), None, None),
            &t
        )
        .unwrap()
        .is_none());
    }
}
