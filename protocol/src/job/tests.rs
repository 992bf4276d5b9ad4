use super::*;

fn tenant() -> TenantId {
    TenantId::new("tenant-a").unwrap()
}

fn job(spec: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "catalog-1", "priority": "batch", "kind": "background_replace", "spec": spec
    }))
    .unwrap()
}

fn good_spec() -> serde_json::Value {
    serde_json::json!({
        "input": {"prefix": "tenant-a/catalog/"},
        "background": {"mode": "color", "color": "#f2f2f2"},
        "output": {"format": "jpeg", "quality": 85},
        "model": "matting-ref@1.0.0"
    })
}

fn rejected(body: &[u8]) -> Rejection {
    validate(body, &tenant()).expect_err("job should be rejected")
}

#[test]
fn a_good_job_validates_into_its_typed_spec() {
    let valid = validate(&job(good_spec()), &tenant()).unwrap();
    assert_eq!(valid.model.to_string(), "matting-ref@1.0.0");
    assert_eq!(valid.request.priority, Priority::Batch);
    let JobKind::BackgroundReplace(spec) = valid.work else { panic!("{:?}", valid.work) };
    assert_eq!(spec.output.quality, 85);
    assert_eq!(spec.input, InputSpec::Prefix("tenant-a/catalog/".into()));
    assert!(matches!(spec.background, BackgroundSpec::Color { .. }));
}

#[test]
fn unknown_fields_anywhere_are_refused() {
    let mut top: serde_json::Value = serde_json::from_slice(&job(good_spec())).unwrap();
    top["tenant"] = "tenant-b".into();
    let r = rejected(&serde_json::to_vec(&top).unwrap());
    assert_eq!(r.code, "malformed");
    assert!(r.reason.contains("tenant"), "{}", r.reason);
    for (path, value) in [("/spec/colour", "x"), ("/spec/output/dpi", "300"), ("/spec/background/opacity", "1")] {
        let mut v: serde_json::Value = serde_json::from_slice(&job(good_spec())).unwrap();
        let (parent, field) = path.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[field] = value.into();
        let r = rejected(&serde_json::to_vec(&v).unwrap());
        assert_eq!(r.code, "malformed", "{path}: {}", r.reason);
    }
}

#[test]
fn keys_of_another_tenant_or_with_traversal_are_refused() {
    let cases = [
        (serde_json::json!({"keys": ["tenant-a/ok.jpg", "tenant-b/theirs.jpg"]}), "forbidden"),
        (serde_json::json!({"keys": ["tenant-a/../tenant-b/x.jpg"]}), "invalid"),
        (serde_json::json!({"prefix": "tenant-b/"}), "forbidden"),
        (serde_json::json!({"manifest": "models/matting-ref/1.0.0/manifest.json"}), "forbidden"),
        (serde_json::json!({"keys": []}), "invalid"),
    ];
    for (input, code) in cases {
        let mut spec = good_spec();
        spec["input"] = input.clone();
        let r = rejected(&job(spec));
        assert_eq!(r.code, code, "{input}: {}", r.reason);
    }
}

#[test]
fn bounds_and_combinations_are_checked() {
    let tweaks: Vec<(&str, serde_json::Value)> = vec![
        ("/output/quality", 0.into()),
        ("/output/max_side", 100_000.into()),
        ("/shard_size", 0.into()),
        ("/model", "matting-ref".into()),
        ("/background", serde_json::json!({"mode": "color", "color": "red"})),
        ("/background", serde_json::json!({"mode": "color", "color": "#+fffff"})),
        ("/background", serde_json::json!({"mode": "blur", "strength_pct": 50.0})),
        ("/background", serde_json::json!({"mode": "image", "key": "tenant-b/bg.jpg"})),
        ("/background", serde_json::json!({"mode": "transparent"})),
        ("/shadow", serde_json::json!({"kind": "drop", "opacity": 1.5})),
        ("/shadow", serde_json::json!({"kind": "drop", "blur_pct": -1.0})),
        ("/shadow", serde_json::json!({"kind": "drop", "offset_pct": [0.0, 40.0]})),
    ];
    for (path, value) in tweaks {
        let mut spec = good_spec();
        let (parent, field) = path.rsplit_once('/').unwrap();
        let target = if parent.is_empty() { &mut spec } else { spec.pointer_mut(parent).unwrap() };
        target[field] = value.clone();
        let r = rejected(&job(spec));
        assert!(r.code == "invalid" || r.code == "forbidden", "{path}={value}: {r:?}");
    }
}

#[test]
fn ids_garbage_and_oversized_messages_are_refused_with_reasons() {
    let mut v: serde_json::Value = serde_json::from_slice(&job(good_spec())).unwrap();
    v["id"] = "../../etc".into();
    assert_eq!(rejected(&serde_json::to_vec(&v).unwrap()).code, "invalid");
    assert_eq!(rejected(b"{not json").code, "malformed");
    assert_eq!(rejected(b"").code, "malformed");
    assert_eq!(rejected(&vec![b' '; MAX_MESSAGE_BYTES + 1]).code, "too_large");
    let r = rejected(
        &serde_json::to_vec(
            &serde_json::json!({"id": "x", "priority": "urgent", "kind": "background_replace", "spec": {}}),
        )
        .unwrap(),
    );
    assert!(r.reason.contains("urgent"), "{}", r.reason);
}

#[test]
fn a_key_listed_twice_is_refused() {
    let mut spec = good_spec();
    spec["input"] = serde_json::json!({"keys": ["tenant-a/a.jpg", "tenant-a/b.jpg", "tenant-a/a.jpg"]});
    let r = rejected(&job(spec));
    assert_eq!(r.code, "invalid");
    assert!(r.reason.contains("tenant-a/a.jpg") && r.reason.contains("twice"), "{}", r.reason);
}

#[test]
fn a_fine_tune_validates_with_its_base_model_and_bounds() {
    let body = |hyper: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "id": "ft-1", "priority": "batch", "kind": "fine_tune",
            "spec": {"base_model": "matting-ref@1.0.0", "data": "tenant-a/ds.jsonl",
                     "output": {"name": "glass", "version": "1"}, "hyper": hyper}
        }))
        .unwrap()
    };
    let valid = validate(&body(serde_json::json!({"steps_phase1": 10, "warmup_steps": 5})), &tenant()).unwrap();
    assert_eq!(valid.model.to_string(), "matting-ref@1.0.0", "a fine-tune's model is its base");
    let JobKind::FineTune(spec) = valid.work else { panic!("{:?}", valid.work) };
    assert_eq!((spec.hyper.steps_phase1, spec.hyper.warmup_steps, spec.hyper.batch_size), (10, 5, 8));
    let refused = validate(&body(serde_json::json!({"steps_phase1": 10, "warmup_steps": 50})), &tenant()).unwrap_err();
    assert!(refused.reason.contains("warmup_steps"), "{refused:?}");
}

#[test]
fn a_shadow_goes_with_any_background_and_has_defaults() {
    let mut spec = good_spec();
    spec["shadow"] = serde_json::json!({"kind": "contact"});
    let valid = validate(&job(spec), &tenant()).unwrap();
    let JobKind::BackgroundReplace(spec) = valid.work else { panic!("{:?}", valid.work) };
    let shadow = spec.shadow.expect("the shadow is kept");
    assert_eq!((shadow.kind, shadow.opacity, shadow.blur_pct), (ShadowKindName::Contact, 0.5, 1.5));
    let mut spec = good_spec();
    spec["shadow"] = serde_json::json!({"kind": "sideways"});
    assert_eq!(rejected(&job(spec)).code, "malformed");
}

fn generate(background: serde_json::Value) -> Vec<u8> {
    let mut spec = good_spec();
    spec["background"] = background;
    job(spec)
}

#[test]
fn a_generate_background_validates_with_its_preset_filling_the_gaps() {
    let body = generate(serde_json::json!({"mode": "generate", "model": "bg-gen-ref@1.0.0", "prompt": "white marble",
                                           "results": 3, "sampling": "fast", "seed": 9}));
    let JobKind::BackgroundReplace(spec) = validate(&body, &tenant()).unwrap().work else { panic!() };
    let BackgroundSpec::Generate(g) = spec.background else { panic!("{:?}", spec.background) };
    assert_eq!((g.results, g.seed, g.sampling), (3, 9, SamplingPreset::Fast));
    assert_eq!(g.steps_and_guidance(None), (8, 5.0));
    assert_eq!(g.steps_and_guidance(Some(3.0)), (8, 3.0), "the generator's own guidance beats the preset's");
    let quality = GenerateSpec { sampling: SamplingPreset::Quality, steps: Some(12), ..g };
    assert_eq!(quality.steps_and_guidance(None), (12, 7.5), "the job's steps win over the preset's");
    let guided = GenerateSpec { guidance: Some(2.0), ..quality };
    assert_eq!(guided.steps_and_guidance(Some(3.0)), (12, 2.0), "the job's guidance wins over all");
}

#[test]
fn a_generate_background_out_of_bounds_is_refused_with_the_field_named() {
    let base = serde_json::json!({"mode": "generate", "model": "bg-gen-ref@1.0.0", "prompt": "wood"});
    let cases = [
        ("results", serde_json::json!(0), "results"),
        ("results", serde_json::json!(9), "results"),
        ("steps", serde_json::json!(0), "steps"),
        ("steps", serde_json::json!(201), "steps"),
        ("guidance", serde_json::json!(0.5), "guidance"),
        ("model", serde_json::json!("no-version"), "model"),
        ("prompt", serde_json::json!("x".repeat(MAX_PROMPT_CHARS + 1)), "prompt"),
        ("reference_image", serde_json::json!("tenant-b/ref.png"), "tenant-b"),
    ];
    for (field, value, named) in cases {
        let mut background = base.clone();
        background[field] = value;
        let r = rejected(&generate(background));
        assert!(r.reason.contains(named), "{field}: {}", r.reason);
    }
    let mut silent = base.clone();
    silent.as_object_mut().unwrap().remove("prompt");
    assert!(rejected(&generate(silent)).reason.contains("prompt or"));
    let mut unknown = base;
    unknown["strength"] = serde_json::json!(1);
    assert_eq!(rejected(&generate(unknown)).code, "malformed", "unknown generate fields are refused");
}

#[test]
fn a_prefix_inside_the_job_s_own_results_is_refused_and_one_above_it_passes() {
    let mut spec = good_spec();
    spec["input"] = serde_json::json!({"prefix": "tenant-a/results/catalog-1/"});
    let r = rejected(&job(spec.clone()));
    assert_eq!(r.code, "invalid");
    assert!(r.reason.contains("own results folder"), "{}", r.reason);
    spec["input"] = serde_json::json!({"prefix": "tenant-a/results/catalog-1/shoes/"});
    assert_eq!(rejected(&job(spec.clone())).code, "invalid");
    // Another job's results, or all of them, are fair input: the split skips this job's own.
    for prefix in ["tenant-a/results/", "tenant-a/results/catalog-0/", "tenant-a/results/catalog-1"] {
        spec["input"] = serde_json::json!({ "prefix": prefix });
        assert!(validate(&job(spec.clone()), &tenant()).is_ok(), "{prefix}");
    }
}
