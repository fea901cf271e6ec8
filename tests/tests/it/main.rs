//! Herald's black-box tests outside any one crate, in one binary: the handlers driven by
//! recorded API Gateway, HTTP API, Function URL and SQS events; the real
//! `aws-sdk-apigatewaymanagement` client against a server that answers as `@connections`
//! does; and the SAM template checked against the code.

mod apigw_client;
mod handlers;
mod infra;
