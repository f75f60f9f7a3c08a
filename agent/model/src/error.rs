//! Error text shared by the renderers of `veza-model` and `veza-plan`.

/// An error and every source under it, `: `-joined (Tera's top-level message alone does
/// not say which line of a template failed).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chain_joins_every_source_in_order() {
        let cases: &[(E, &str)] = &[
            (E("alone", None), "alone"),
            (
                E("render", Some(Box::new(E("line 3", Some(Box::new(E("no such var", None))))))),
                "render: line 3: no such var",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(error_chain(e), *want);
        }
    }
}
