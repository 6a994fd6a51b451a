//! [`Task`]: the prompt templates of the mix checkpoints, with the argument checks
//! that keep a prompt's structure intact.

use crate::error::TaskError;

/// A PaliGemma task: builds the exact prompt the mix checkpoints were trained on.
///
/// Construct the variants directly or with the convenience constructors, then call
/// [`Task::prompt`], which validates the arguments.
///
/// ```
/// use paligemma::task::Task;
/// assert_eq!(Task::caption("en").prompt().unwrap(), "caption en");
/// assert_eq!(Task::detect(&["cat", " red car "]).prompt().unwrap(), "detect cat ; red car");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// `caption {lang}`: a short caption.
    Caption {
        /// Output language code (see [`Task::prompt`] for the accepted form).
        lang: String,
    },
    /// `describe {lang}`: a longer description.
    Describe {
        /// Output language code.
        lang: String,
    },
    /// `ocr`: the text in the image.
    Ocr,
    /// `answer {lang} {question}`: visual question answering.
    Answer {
        /// Language code of question and answer.
        lang: String,
        /// The question; one line, trimmed.
        question: String,
    },
    /// `question {lang} {answer}`: generate a question that has the given answer.
    Question {
        /// Language code.
        lang: String,
        /// The answer; one line, trimmed.
        answer: String,
    },
    /// `detect a ; b`: boxes for each named object class.
    Detect {
        /// Object classes; each is trimmed and must be non-empty.
        objects: Vec<String>,
    },
    /// `segment a ; b`: boxes and masks for each named object class. PaliGemma 1 was
    /// trained with one object per prompt; PaliGemma 2's documentation also lists
    /// several.
    Segment {
        /// Object classes; each is trimmed and must be non-empty.
        objects: Vec<String>,
    },
}

impl Task {
    /// [`Task::Caption`]: `caption {lang}`.
    pub fn caption(lang: &str) -> Self {
        Task::Caption { lang: lang.into() }
    }

    /// [`Task::Describe`]: `describe {lang}`.
    pub fn describe(lang: &str) -> Self {
        Task::Describe { lang: lang.into() }
    }

    /// [`Task::Ocr`]: `ocr`.
    pub fn ocr() -> Self {
        Task::Ocr
    }

    /// [`Task::Answer`]: `answer {lang} {question}`.
    pub fn answer(lang: &str, question: &str) -> Self {
        Task::Answer {
            lang: lang.into(),
            question: question.into(),
        }
    }

    /// [`Task::Question`]: `question {lang} {answer}`.
    pub fn question(lang: &str, answer: &str) -> Self {
        Task::Question {
            lang: lang.into(),
            answer: answer.into(),
        }
    }

    /// [`Task::Detect`]: `detect a ; b ; ...`.
    pub fn detect<S: AsRef<str>>(objects: &[S]) -> Self {
        Task::Detect {
            objects: objects.iter().map(|s| s.as_ref().to_string()).collect(),
        }
    }

    /// [`Task::Segment`]: `segment a ; b ; ...`.
    pub fn segment<S: AsRef<str>>(objects: &[S]) -> Self {
        Task::Segment {
            objects: objects.iter().map(|s| s.as_ref().to_string()).collect(),
        }
    }

    /// The token budget the typed task methods use: room for a long answer, or for
    /// many objects (a detection takes about 7 tokens, a segmentation about 22).
    ///
    /// ```
    /// use paligemma::task::Task;
    /// assert_eq!(Task::caption("en").default_max_new_tokens(), 64);
    /// assert_eq!(Task::segment(&["cat"]).default_max_new_tokens(), 256);
    /// ```
    pub fn default_max_new_tokens(&self) -> usize {
        match self {
            Task::Caption { .. } | Task::Answer { .. } | Task::Question { .. } => 64,
            Task::Describe { .. } | Task::Ocr | Task::Detect { .. } => 256,
            Task::Segment { objects } => (24 * objects.len() + 8).clamp(256, 512),
        }
    }

    /// Validate the arguments and build the prompt text, without the trailing newline
    /// (the processor adds it).
    ///
    /// Rules:
    /// - Language codes are two or three lowercase ASCII letters (ISO 639-1 or 639-2/3,
    ///   e.g. `en`, `de`, `fil`), optionally followed by `-` and one subtag of two to
    ///   four ASCII letters or digits for a region or script (`pt-BR`, `zh-CN`,
    ///   `sr-Latn`). The code is used exactly as given. The mix checkpoints were
    ///   trained on captions and answers in about 35 languages (the languages of the
    ///   COCO-35L captions: English and 34 translations, including for example `de`,
    ///   `es`, `fr`, `it`, `ja`, `ko`, `nl`, `pl`, `pt`, `ru`, `tr`, `uk`, `vi`, `zh`);
    ///   other well-formed codes are accepted and simply work worse.
    /// - Questions and answers are trimmed, must be non-empty, may not contain a
    ///   newline (`\n` or `\r`), and may not contain special tokens of the vocabulary
    ///   (`<image>`, `<bos>`, `<eos>`, `<pad>`, `<unk>`, `<mask>`, `<start_of_turn>`,
    ///   `<end_of_turn>`, `<locN>`, `<segN>`, `<unusedN>`), which the tokenizer would
    ///   not treat as text.
    /// - Object lists must be non-empty; each name is trimmed, must be non-empty and
    ///   may not contain `;` (the separator), a newline, `<` or `>`.
    ///
    /// ```
    /// use paligemma::task::{Task, TaskError};
    /// assert_eq!(Task::detect(&["cat", "dog"]).prompt().unwrap(), "detect cat ; dog");
    /// assert_eq!(Task::answer("en", "what is this?").prompt().unwrap(), "answer en what is this?");
    /// assert!(matches!(Task::detect(&["cat;dog"]).prompt(), Err(TaskError::ReservedInObject { .. })));
    /// assert!(matches!(Task::caption("English").prompt(), Err(TaskError::Language(_))));
    /// ```
    pub fn prompt(&self) -> Result<String, TaskError> {
        Ok(match self {
            Task::Caption { lang } => format!("caption {}", language(lang)?),
            Task::Describe { lang } => format!("describe {}", language(lang)?),
            Task::Ocr => "ocr".to_string(),
            Task::Answer { lang, question } => {
                format!("answer {} {}", language(lang)?, text(question, "question")?)
            }
            Task::Question { lang, answer } => {
                format!("question {} {}", language(lang)?, text(answer, "answer")?)
            }
            Task::Detect { objects } => format!("detect {}", object_list(objects, "detect")?),
            Task::Segment { objects } => format!("segment {}", object_list(objects, "segment")?),
        })
    }
}

/// Check a language code; see [`Task::prompt`] for the rule.
fn language(code: &str) -> Result<&str, TaskError> {
    let (base, subtag) = match code.split_once('-') {
        Some((base, subtag)) => (base, Some(subtag)),
        None => (code, None),
    };
    let base_ok = (2..=3).contains(&base.len()) && base.bytes().all(|b| b.is_ascii_lowercase());
    let subtag_ok = subtag
        .is_none_or(|s| (2..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    if base_ok && subtag_ok {
        Ok(code)
    } else {
        Err(TaskError::Language(code.to_string()))
    }
}

/// Check a free-text argument (question or answer) and return it trimmed.
fn text<'a>(t: &'a str, field: &'static str) -> Result<&'a str, TaskError> {
    let t = t.trim();
    if t.is_empty() {
        return Err(TaskError::EmptyText(field));
    }
    if t.contains(['\n', '\r']) {
        return Err(TaskError::Newline(field));
    }
    if let Some(token) = find_special_token(t) {
        return Err(TaskError::SpecialToken {
            field,
            token: token.to_string(),
        });
    }
    Ok(t)
}

/// The first special token of the PaliGemma vocabulary written in `s`, if any.
fn find_special_token(s: &str) -> Option<&str> {
    const NAMED: [&str; 8] = [
        "<image>",
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
        "<mask>",
        "<start_of_turn>",
        "<end_of_turn>",
    ];
    const NUMBERED: [&str; 3] = ["<loc", "<seg", "<unused"];
    for (at, _) in s.match_indices('<') {
        let rest = s.get(at..).unwrap_or("");
        if let Some(name) = NAMED.iter().find(|n| rest.starts_with(**n)) {
            return rest.get(..name.len());
        }
        for prefix in NUMBERED {
            let Some(after) = rest.strip_prefix(prefix) else {
                continue;
            };
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && after.as_bytes().get(digits) == Some(&b'>') {
                return rest.get(..prefix.len() + digits + 1);
            }
        }
    }
    None
}

/// Check an object list and join it with ` ; `.
fn object_list(objects: &[String], verb: &'static str) -> Result<String, TaskError> {
    if objects.is_empty() {
        return Err(TaskError::NoObjects(verb));
    }
    let mut names = Vec::with_capacity(objects.len());
    for (index, name) in objects.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            return Err(TaskError::EmptyObject { index });
        }
        let reserved = if name.contains(';') {
            Some("';' (the object separator)")
        } else if name.contains(['\n', '\r']) {
            Some("a newline")
        } else if name.contains(['<', '>']) {
            Some("'<' or '>' (token markup)")
        } else {
            None
        };
        if let Some(what) = reserved {
            return Err(TaskError::ReservedInObject {
                name: name.to_string(),
                what,
            });
        }
        names.push(name);
    }
    Ok(names.join(" ; "))
}
