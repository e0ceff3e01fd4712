//! The invoke endpoint of `lambda-local` as the AWS SDKs see it: boto3 and the AWS CLI, unmodified,
//! pointed at it with `--endpoint-url` (`tests/aws_clients/check.py` lists the checks). The same
//! checks run against `lambda-vm` in `tests/microvm.rs`.

use integration_tests::aws_clients;
use integration_tests::peers::Peer;
use integration_tests::server::LocalServer;

#[test]
fn boto3_and_the_aws_cli_get_lambdas_answers_from_lambda_local() {
    let Some(launch) = Peer::BootstrapLibrary.launch() else {
        return;
    };
    let Some(server) = LocalServer::start(&launch, &[]) else {
        return;
    };
    aws_clients::check(&server.invoke_addr, "function", aws_clients::Service::Local);
}
