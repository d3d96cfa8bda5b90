//! DEL and GC. DEL is idempotent: a namespace, interface, endpoint or
//! address already gone is success (CNI spec, DEL: "plugins should
//! generally complete a DEL action without error even if some resources are
//! missing"). It needs no CNI_NETNS: deleting the host end of the veth
//! takes the container's end with it.
use std::collections::HashSet;

use rscni_plugin::{error::Error, types::Args};

use super::{
    agent::Agent,
    conf::{Attachment, PluginConf, address_owner, host_interface},
    host_namespace, internal,
};
use crate::veth;

/// DEL: the endpoint off the agent, the veth deleted, the address released.
pub fn del(args: &Args) -> Result<(), Error> {
    let conf = PluginConf::parse(args.config())?;
    let attachment = Attachment::of(args)?;
    let agent = Agent::new(&conf.agent_socket);
    agent.remove_endpoint(&attachment.host_interface())?;
    remove_link(&conf, &agent, attachment.host_interface())?;
    let owner = attachment.address_owner();
    for row in agent.allocations(&conf.network)?.into_iter().filter(|row| row.owner == owner) {
        agent.release(&conf.network, row.address)?;
    }
    Ok(())
}

/// Deletes a host end of a veth, if it is there.
fn remove_link(conf: &PluginConf, agent: &Agent, name: String) -> Result<(), Error> {
    let host = host_namespace(conf, agent)?;
    host.run(move |handle| async move { veth::delete_link(&handle, &name).await.map(|_| ()).map_err(|error| internal(error.to_string())) })
}

/// GC: every endpoint of this plugin in this network, and every address it
/// allocated there, whose attachment (container id, interface name) is not
/// in `cni.dev/valid-attachments` goes. It carries on past a failure and
/// reports the first one (CNI spec, GC).
pub fn gc(args: &Args) -> Result<(), Error> {
    let conf = PluginConf::parse(args.config())?;
    let agent = Agent::new(&conf.agent_socket);
    let valid = args.config().valid_attachments.clone().unwrap_or_default();
    let valid_interfaces: HashSet<String> = valid.iter().map(|a| host_interface(&a.container_id, &a.ifname)).collect();
    let valid_owners: HashSet<String> = valid.iter().map(|a| address_owner(&a.container_id, &a.ifname)).collect();
    let mut first_error = None;
    let mut note = |result: Result<(), Error>| {
        if let Err(error) = result {
            first_error.get_or_insert(error);
        }
    };
    for endpoint in agent.cni_endpoints(&conf.network)? {
        if !valid_interfaces.contains(&endpoint.interface) {
            note(agent.remove_endpoint(&endpoint.id).map(|_| ()));
            note(remove_link(&conf, &agent, endpoint.interface.clone()));
        }
    }
    for row in agent.allocations(&conf.network)? {
        if row.owner.starts_with("cni:") && !valid_owners.contains(&row.owner) {
            note(agent.release(&conf.network, row.address));
        }
    }
    first_error.map_or(Ok(()), Err)
}
