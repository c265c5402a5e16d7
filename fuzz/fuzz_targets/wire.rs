//! The job and result decoders (`Job::decode`, `JobResult::decode`) on arbitrary bytes: they
//! never panic, and whatever decodes survives encode → decode unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vss_protocol::job::{Job, JobResult, JobSpec, Outcome};

fn job(data: &[u8]) {
    let Ok(job) = Job::decode(data) else { return };
    let bytes = job.encode();
    let again = Job::decode(&bytes).expect("an encoded job decodes");
    assert_eq!(again, job, "a job survives encode → decode");
    assert_eq!(again.encode(), bytes, "encoding is stable");
    if let JobSpec::Sync(sync) = &job.spec
        && let Some(shard) = sync.shard
    {
        let _ = shard.owns(&job.target);
    }
    let result = JobResult::new(&job, Outcome::Succeeded);
    assert_eq!(JobResult::decode(&result.encode()).expect("a fresh result decodes"), result);
}

fn result(data: &[u8]) {
    let Ok(result) = JobResult::decode(data) else { return };
    let bytes = result.encode();
    let again = JobResult::decode(&bytes).expect("an encoded result decodes");
    assert_eq!(again, result, "a result survives encode → decode");
    assert_eq!(again.encode(), bytes, "encoding is stable");
    let _ = result.summary();
}

fuzz_target!(|data: &[u8]| {
    job(data);
    result(data);
});
